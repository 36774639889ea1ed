/** The transparency log: entries, C2SP signed notes and tlog-checkpoints. */
import { type KeyObject } from "node:crypto";
import { b64decode, ed25519Verify, equal, publicKey, sha256, utf8 } from "./bytes.js";
import { fail } from "./errors.js";
import { leafHash } from "./merkle.js";

const ED25519 = 0x01;
const EM_DASH = "\u2014";

/** uint64 seq ‖ uint8 len ‖ dataset ‖ uint8 len ‖ publisher ‖ digest[32] ‖ batch_root[32] ‖
 * uint64 accepted_at (µs since the Unix epoch), big-endian (TLS presentation, RFC 8446 §3). */
export function entryBytes(seq: number, dataset: string, publisher: string, digest: Uint8Array,
                           batchRoot: Uint8Array, acceptedUs: number): Buffer {
  const d = utf8(dataset);
  const p = utf8(publisher);
  if (d.length > 255 || p.length > 255 || digest.length !== 32 || batchRoot.length !== 32) {
    fail("bad_entry", "log entry field out of range");
  }
  const u64 = (n: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(n));
    return b;
  };
  return Buffer.concat([u64(seq), Buffer.from([d.length]), d, Buffer.from([p.length]), p,
                        digest, batchRoot, u64(acceptedUs)]);
}

export const entryLeaf = (...args: Parameters<typeof entryBytes>): Buffer => leafHash(entryBytes(...args));

export interface NoteVerifier {
  name: string;
  keyId: Buffer;
  key: KeyObject;
}

/** A signed-note verifier key: name+hexid+base64(0x01 ‖ key), id = SHA-256(name ‖ 0x0A ‖ 0x01 ‖
 * key)[:4]. */
export function parseVkey(vkey: string): NoteVerifier {
  // name+hexid+key: split at the first two "+" only (base64 may hold "+" too)
  const m = /^([^+]*)\+([^+]*)\+(.*)$/s.exec(vkey.trim());
  if (!m) fail("bad_vkey", `verifier key ${vkey} is malformed`);
  const [, name, hexid, b64] = m as unknown as [string, string, string, string];
  const raw = b64decode(b64, "bad_vkey");
  if (raw.length !== 33 || raw[0] !== ED25519) fail("bad_vkey", "verifier key is not an Ed25519 key");
  if (!name || /\s/.test(name)) fail("bad_vkey", "verifier key name is not valid");
  const keyId = sha256(utf8(name), Buffer.from([0x0a, ED25519]), raw.subarray(1)).subarray(0, 4);
  if (keyId.toString("hex") !== hexid) fail("bad_vkey", "verifier key id does not match its name and key");
  return { name, keyId, key: publicKey(raw.subarray(1).toString("base64")) };
}

/** Verify a note signed by `verifier`; returns its text (ending in a newline). */
export function openNote(verifier: NoteVerifier, note: string): string {
  const at = note.lastIndexOf("\n\n");
  if (at < 0) fail("checkpoint_invalid", "not a signed note (no blank line)");
  const text = note.slice(0, at + 1);
  const prefix = `${EM_DASH} ${verifier.name} `;
  for (const line of note.slice(at + 2).split("\n")) {
    if (!line.startsWith(prefix)) continue;
    let blob: Buffer;
    try {
      blob = b64decode(line.slice(prefix.length));
    } catch {
      continue;
    }
    if (blob.length !== 68 || !equal(blob.subarray(0, 4), verifier.keyId)) continue;
    if (!ed25519Verify(verifier.key, utf8(text), blob.subarray(4))) {
      fail("checkpoint_forged", `signature of ${verifier.name} on the note does not verify`);
    }
    return text;
  }
  return fail("checkpoint_forged", `the note carries no signature by ${verifier.name}`);
}

export interface Checkpoint {
  origin: string;
  size: number;
  root: Buffer;
}

/** C2SP tlog-checkpoint body: origin, decimal size, base64 root (extension lines allowed). */
export function parseCheckpoint(text: string): Checkpoint {
  const lines = text.split("\n");
  const [origin, size, root] = lines;
  if (!origin || !size || !/^(0|[1-9][0-9]*)$/.test(size) || root === undefined) {
    fail("checkpoint_invalid", "checkpoint body is malformed");
  }
  const raw = b64decode(root, "checkpoint_invalid");
  if (raw.length !== 32) fail("checkpoint_invalid", "checkpoint root is not 32 bytes");
  const n = Number(size);
  if (!Number.isSafeInteger(n)) fail("checkpoint_invalid", "checkpoint size is too large");
  return { origin, size: n, root: raw };
}

export function openCheckpoint(vkey: string, note: string, origin?: string): Checkpoint {
  const cp = parseCheckpoint(openNote(parseVkey(vkey), note));
  if (origin !== undefined && cp.origin !== origin) {
    fail("checkpoint_invalid", `checkpoint is for log ${cp.origin}, not ${origin}`);
  }
  return cp;
}
