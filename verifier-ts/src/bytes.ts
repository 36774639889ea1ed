import { createHash, createPublicKey, verify, type KeyObject } from "node:crypto";
import { fail } from "./errors.js";

const B64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Standard base64 with padding (RFC 4648 §4), strictly: Buffer.from alone accepts anything. */
export function b64decode(text: unknown, code = "malformed"): Buffer {
  if (typeof text !== "string" || !B64.test(text)) fail(code, `not standard base64: ${String(text)}`);
  return Buffer.from(text, "base64");
}

export const b64encode = (raw: Uint8Array): string => Buffer.from(raw).toString("base64");

export function sha256(...parts: Uint8Array[]): Buffer {
  const h = createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest();
}

export const utf8 = (text: string): Buffer => Buffer.from(text, "utf8");

// DER SubjectPublicKeyInfo of an Ed25519 key (RFC 8410 §4) is this prefix and the 32 raw bytes.
const SPKI_ED25519 = Buffer.from("302a300506032b6570032100", "hex");

/** An Ed25519 public key from its raw 32 bytes in base64, or from a PEM SPKI text. */
export function publicKey(text: string): KeyObject {
  if (text.includes("-----BEGIN")) return createPublicKey(text);
  const raw = b64decode(text.trim(), "bad_key");
  if (raw.length !== 32) fail("bad_key", "an Ed25519 public key is 32 bytes");
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: "der", type: "spki" });
}

export function rawPublicKey(key: KeyObject): Buffer {
  const der = key.export({ format: "der", type: "spki" });
  return der.subarray(der.length - 32);
}

export function ed25519Verify(key: KeyObject, message: Uint8Array, signature: Uint8Array): boolean {
  if (signature.length !== 64) return false;
  return verify(null, message, key, signature);
}

export const equal = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;
