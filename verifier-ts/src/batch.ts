/** A whole batch: its records' digests, in index order, make the signed Merkle root; no audit
 * path is needed. */
import type { KeyObject } from "node:crypto";
import { b64decode, equal } from "./bytes.js";
import { fail } from "./errors.js";
import { leafHash, merkleRoot } from "./merkle.js";
import { checkSigner, digestOf, type DeliveredRecord, type Groups, type Statement, verifyStatement } from "./record.js";

export type BatchRecord = Omit<DeliveredRecord, "index" | "path"> & { index?: number };

/** Verify every record of one batch together; returns their digests in index order. */
export function verifyBatch(records: BatchRecord[], groups: Groups, statement: Statement,
                            signature: string, key: KeyObject): Buffer[] {
  if (records.length !== statement.size) {
    fail("signature_invalid", `statement says ${statement.size} records, ${records.length} arrived`);
  }
  const ordered = records.every((r) => typeof r.index === "number")
    ? [...records].sort((a, b) => (a.index ?? 0) - (b.index ?? 0))
    : records;
  if (ordered.some((r, i) => r.index !== undefined && r.index !== i)) {
    fail("signature_invalid", "the records' indexes are not 0..size-1");
  }
  const digests = ordered.map((r) => {
    checkSigner(r.event, statement);
    return digestOf(r, groups);
  });
  if (!equal(merkleRoot(digests.map(leafHash)), b64decode(statement.root, "signature_invalid"))) {
    fail("signature_invalid", "the records do not make the signed batch root (a record was altered)");
  }
  verifyStatement(statement, signature, key);
  return digests;
}
