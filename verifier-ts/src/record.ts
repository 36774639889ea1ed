/** Records: group commitments, the record digest, and a delivered record verified alone
 * against its publisher's signed batch statement (docs/canonical.md, "Records"). */
import type { KeyObject } from "node:crypto";
import { b64decode, b64encode, ed25519Verify, equal, sha256, utf8 } from "./bytes.js";
import { fail } from "./errors.js";
import { canonicalBytes } from "./jcs.js";
import { leafHash, rootFromInclusion } from "./merkle.js";

export const STATEMENT_CONTEXT = utf8("vn-exchange/batch-statement/v1\n");
export const SALT_BYTES = 16;
export const COMMITMENT_BYTES = 32;

export type Groups = Record<string, string[]>;
export type Obj = Record<string, unknown>;

export interface Statement {
  node: string;
  dataset: string;
  root: string; // base64
  size: number;
  time: string;
  kid?: string;
}

export interface DeliveredRecord {
  event: Obj & { data: Obj };
  salts: Record<string, string>;
  withheld?: Record<string, string>;
  index: number;
  path?: string[];
}

/** c = SHA-256(salt ‖ group ‖ 0x00 ‖ JCS(the group's fields present in data)). */
export function commit(salt: Uint8Array, group: string, data: Obj, fields: string[]): Buffer {
  const part: Obj = {};
  for (const f of fields) if (Object.hasOwn(data, f)) part[f] = data[f];
  return sha256(salt, utf8(group), Buffer.from([0]), canonicalBytes(part));
}

/** Every group's commitment of a (possibly projected) record: disclosed groups are
 * recomputed from their salt, withheld ones are taken as sent. */
export function openedCommitments(data: Obj, groups: Groups, salts: Record<string, string>,
                                  withheld: Record<string, string>): Record<string, Buffer> {
  const disclosed = Object.keys(salts);
  const hidden = Object.keys(withheld);
  const names = Object.keys(groups);
  if (disclosed.some((g) => hidden.includes(g))) fail("disclosure_invalid", "a group is both disclosed and withheld");
  const all = new Set([...disclosed, ...hidden]);
  if (all.size !== names.length || !names.every((g) => all.has(g))) {
    fail("disclosure_invalid", `groups ${[...all].sort()} do not match the schema's ${names.sort()}`);
  }
  const allowed = new Set(disclosed.flatMap((g) => groups[g] ?? []));
  const stray = Object.keys(data).filter((f) => !allowed.has(f));
  if (stray.length) fail("disclosure_invalid", `fields ${stray} are outside every disclosed group`);
  const out: Record<string, Buffer> = {};
  for (const g of names) {
    if (Object.hasOwn(withheld, g)) {
      const c = b64decode(withheld[g], "disclosure_invalid");
      if (c.length !== COMMITMENT_BYTES) fail("disclosure_invalid", `commitment of group ${g} is not 32 bytes`);
      out[g] = c;
    } else {
      const s = b64decode(salts[g], "disclosure_invalid");
      if (s.length !== SALT_BYTES) fail("disclosure_invalid", `salt of group ${g} is not 16 bytes`);
      out[g] = commit(s, g, data, groups[g] ?? []);
    }
  }
  return out;
}

const ATTRIBUTES = ["specversion", "id", "source", "type", "subject", "time", "datacontenttype",
                    "dataschema", "version"] as const;
const DEFAULTS: Obj = { specversion: "1.0", datacontenttype: "application/json" };

/** Every CloudEvents attribute of the envelope but `data`. */
export function attributes(event: Obj): Obj {
  const out: Obj = {};
  for (const a of ATTRIBUTES) {
    const v = Object.hasOwn(event, a) ? event[a] : DEFAULTS[a];
    if (v === undefined) fail("signature_invalid", `the event has no ${a}`);
    out[a] = v;
  }
  return out;
}

/** digest = SHA-256(JCS({"attributes": …, "commitments": {group: base64(c)}})). */
export function recordDigest(attrs: Obj, commitments: Record<string, Uint8Array | string>): Buffer {
  const cs: Obj = {};
  for (const [g, c] of Object.entries(commitments)) cs[g] = typeof c === "string" ? c : b64encode(c);
  return sha256(canonicalBytes({ attributes: attrs, commitments: cs }));
}

export function digestOf(record: Pick<DeliveredRecord, "event" | "salts" | "withheld">, groups: Groups): Buffer {
  const cs = openedCommitments(record.event.data, groups, record.salts, record.withheld ?? {});
  return recordDigest(attributes(record.event), cs);
}

const TYPE = /^vn\.exchange\.([a-z][a-z0-9_]*)\.v([1-9][0-9]*)$/;

/** The record is its signer's, and of the signed dataset. */
export function checkSigner(event: Obj, statement: Statement): void {
  if (event.source !== statement.node) {
    fail("signature_invalid", `record source ${String(event.source)} is not the signer ${statement.node}`);
  }
  const m = TYPE.exec(String(event.type));
  if (!m || m[1] !== statement.dataset) fail("signature_invalid", "record type does not match the signed dataset");
}

/** STATEMENT_CONTEXT ‖ JCS(statement). */
export function statementBytes(statement: Statement): Buffer {
  const st: Obj = { ...statement };
  if (st.kid === null || st.kid === undefined) delete st.kid;
  return Buffer.concat([STATEMENT_CONTEXT, canonicalBytes(st)]);
}

export function verifyStatement(statement: Statement, signature: string, key: KeyObject): void {
  const sig = b64decode(signature, "signature_invalid");
  if (!ed25519Verify(key, statementBytes(statement), sig)) {
    fail("signature_invalid", `batch signature of ${statement.node} does not verify`);
  }
}

/** Verify one delivered record alone: its digest, its audit path to the signed root, the
 * statement's signature. Returns the record's digest (what the log entry binds). */
export function verifyRecord(record: DeliveredRecord, groups: Groups, statement: Statement,
                             signature: string, key: KeyObject): Buffer {
  checkSigner(record.event, statement);
  const digest = digestOf(record, groups);
  const path = (record.path ?? []).map((p) => b64decode(p, "signature_invalid"));
  let root: Buffer;
  try {
    root = rootFromInclusion(leafHash(digest), record.index, statement.size, path);
  } catch {
    return fail("signature_invalid", "record is not in the signed batch (digest or path altered)");
  }
  if (!equal(root, b64decode(statement.root, "signature_invalid"))) {
    fail("signature_invalid", "record is not in the signed batch (digest or path altered)");
  }
  verifyStatement(statement, signature, key);
  return digest;
}
