/** Run every conformance vector of schemas/vectors/: valid ones must verify, tampered ones
 * must fail with the error code the vector names. */
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { verifyBatch, type BatchRecord } from "./batch.js";
import { b64decode, equal, publicKey, sha256, utf8 } from "./bytes.js";
import { entryBytes, openCheckpoint } from "./checkpoint.js";
import { VerifyError } from "./errors.js";
import { canonicalize } from "./jcs.js";
import { leafHash, verifyConsistency, verifyInclusion } from "./merkle.js";
import { verifyReceipt, type SignedReceipt } from "./receipt.js";
import { commit, type DeliveredRecord, type Groups, recordDigest, type Statement, verifyRecord } from "./record.js";

type V = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const checks: Record<string, (v: V) => string | null> = {
  canonical(v) {
    const c = canonicalize(JSON.parse(v.input));
    const ok = c === v.canonical && sha256(utf8(v.canonical)).toString("hex") === v.sha256;
    return ok ? null : "canonical_mismatch";
  },
  commitment(v) {
    const c = commit(b64decode(v.salt), v.group, v.fields, Object.keys(v.fields));
    return equal(c, b64decode(v.commitment)) ? null : "commitment_mismatch";
  },
  record_digest(v) {
    const d = recordDigest(v.attributes, v.commitments);
    return equal(d, b64decode(v.digest)) && equal(leafHash(d), b64decode(v.leaf_hash)) ? null : "digest_mismatch";
  },
  batch(v) {
    verifyBatch(v.records as BatchRecord[], v.groups as Groups, v.statement as Statement, v.signature, publicKey(v.public_key));
    return null;
  },
  record(v) {
    verifyRecord(v.record as DeliveredRecord, v.groups as Groups, v.statement as Statement, v.signature, publicKey(v.public_key));
    return null;
  },
  receipt(v) {
    verifyReceipt(v.signed as SignedReceipt, publicKey(v.broker_key));
    return null;
  },
  log_entry(v) {
    const e = entryBytes(v.seq, v.dataset, v.publisher, b64decode(v.digest), b64decode(v.batch_root), v.accepted_us);
    return equal(e, b64decode(v.entry)) && equal(leafHash(e), b64decode(v.leaf_hash)) ? null : "entry_mismatch";
  },
  inclusion(v) {
    verifyInclusion(b64decode(v.leaf_hash), v.index, v.size, v.proof.map((p: string) => b64decode(p)), b64decode(v.root));
    return null;
  },
  consistency(v) {
    verifyConsistency(v.old, v.new, b64decode(v.old_root), b64decode(v.new_root), v.proof.map((p: string) => b64decode(p)));
    return null;
  },
  checkpoint(v) {
    const cp = openCheckpoint(v.vkey, v.note, v.origin);
    return cp.size === v.size && equal(cp.root, b64decode(v.root)) ? null : "checkpoint_invalid";
  },
};

export interface Result {
  file: string;
  name: string;
  kind: string;
  valid: boolean;
  expected: string | null;
  got: string | null;
  message?: string;
  ok: boolean;
}

export function checkVector(v: V): { got: string | null; message?: string } {
  const check = checks[v.kind];
  if (!check) return { got: "unknown_kind", message: `no check for kind ${v.kind}` };
  try {
    return { got: check(v) };
  } catch (err) {
    if (err instanceof VerifyError) return { got: err.code, message: err.message };
    return { got: "crash", message: String(err) };
  }
}

export function runVectors(dir: string): Result[] {
  const results: Result[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
    const content = JSON.parse(readFileSync(join(dir, file), "utf8")) as { vectors?: V[] };
    for (const v of content.vectors ?? []) {
      const { got, message } = checkVector(v);
      const expected = (v.error ?? null) as string | null;
      results.push({ file, name: v.name, kind: v.kind, valid: v.valid, expected, got,
                     ...(message ? { message } : {}), ok: got === expected });
    }
  }
  return results;
}
