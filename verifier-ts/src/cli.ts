#!/usr/bin/env node
/** exchange-verify: check what the exchange delivers with nothing but Node's standard library.
 *
 *   node dist/cli.js vectors DIR                        every conformance vector
 *   node dist/cli.js record FILE [--key KEY]            delivered record(s) with audit paths
 *   node dist/cli.js batch FILE [--key KEY]             a whole batch, by its root
 *   node dist/cli.js receipt FILE --key KEY             a broker receipt
 *   node dist/cli.js checkpoint NOTE --vkey VKEY [--origin O]
 *   node dist/cli.js inclusion FILE --vkey VKEY [--origin O]
 *
 * KEY: an Ed25519 public key as raw base64 or PEM (SPKI), or a file holding either. VKEY: a
 * signed-note verifier key, or a file holding it. Prints one JSON object; exits 0 when
 * everything verified, 1 when something did not (with its code), 2 on a usage error. */
import { existsSync, readFileSync } from "node:fs";
import { verifyBatch, type BatchRecord } from "./batch.js";
import { b64decode, b64encode, publicKey } from "./bytes.js";
import { entryLeaf, openCheckpoint } from "./checkpoint.js";
import { VerifyError } from "./errors.js";
import { verifyInclusion } from "./merkle.js";
import { verifyReceipt, type SignedReceipt } from "./receipt.js";
import { type DeliveredRecord, type Groups, type Statement, verifyRecord } from "./record.js";
import { runVectors } from "./vectors.js";

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

class Usage extends Error {}

function option(args: string[], name: string): string | undefined {
  const at = args.indexOf(name);
  if (at < 0) return undefined;
  const value = args[at + 1];
  if (value === undefined) throw new Usage(`${name} needs a value`);
  args.splice(at, 2);
  return existsSync(value) ? readFileSync(value, "utf8").trim() : value;
}

const readJson = (path: string): Obj => JSON.parse(readFileSync(path, "utf8")) as Obj;

function keyFrom(given: string | undefined, doc: Obj, field: string): ReturnType<typeof publicKey> {
  const text = given ?? doc[field];
  if (typeof text !== "string") throw new Usage(`no key: give --key or a "${field}" member`);
  return publicKey(text);
}

function run(argv: string[]): Obj {
  const args = [...argv];
  const command = args.shift();
  const key = option(args, "--key");
  const vkey = option(args, "--vkey");
  const origin = option(args, "--origin");
  const file = args[0];
  if (!command || (!file && command !== "help")) throw new Usage("usage: cli.js vectors|record|batch|receipt|checkpoint|inclusion FILE [options]");
  switch (command) {
    case "vectors": {
      const results = runVectors(file!);
      const failed = results.filter((r) => !r.ok);
      return { ok: failed.length === 0 && results.length > 0, passed: results.length - failed.length,
               failed: failed.length, results };
    }
    case "record": {
      const doc = readJson(file!);
      const records: DeliveredRecord[] = doc.records ?? [doc.record];
      const k = keyFrom(key, doc, "public_key");
      const digests = records.map((r) => b64encode(verifyRecord(r, doc.groups as Groups, doc.statement as Statement, doc.signature, k)));
      return { ok: true, verified: records.length, digests };
    }
    case "batch": {
      const doc = readJson(file!);
      const digests = verifyBatch(doc.records as BatchRecord[], doc.groups as Groups, doc.statement as Statement,
                                  doc.signature, keyFrom(key, doc, "public_key"));
      return { ok: true, verified: digests.length, root: doc.statement.root, digests: digests.map(b64encode) };
    }
    case "receipt": {
      const doc = readJson(file!);
      verifyReceipt((doc.signed ?? doc) as SignedReceipt, keyFrom(key, doc, "broker_key"));
      return { ok: true };
    }
    case "checkpoint": {
      if (!vkey) throw new Usage("checkpoint needs --vkey");
      const cp = openCheckpoint(vkey, readFileSync(file!, "utf8"), origin);
      return { ok: true, origin: cp.origin, size: cp.size, root: b64encode(cp.root) };
    }
    case "inclusion": {
      // {"note": signed checkpoint, "index": seq, "proof": [...], "entry": {seq, dataset,
      //  publisher, digest, batch_root, accepted_us}} (or "leaf_hash" instead of "entry")
      const doc = readJson(file!);
      const v = vkey ?? doc.vkey;
      if (typeof v !== "string") throw new Usage("inclusion needs --vkey");
      const cp = openCheckpoint(v, doc.note, origin ?? doc.origin);
      if (doc.size !== undefined && doc.size !== cp.size) {
        throw new VerifyError("proof_invalid", `the proof is for size ${doc.size}, the checkpoint's is ${cp.size}`);
      }
      const e = doc.entry;
      const leaf = e ? entryLeaf(e.seq, e.dataset, e.publisher, b64decode(e.digest), b64decode(e.batch_root), e.accepted_us)
                     : b64decode(doc.leaf_hash);
      const index: number = doc.index ?? e?.seq;
      verifyInclusion(leaf, index, cp.size, (doc.proof as string[]).map((p) => b64decode(p)), cp.root);
      return { ok: true, index, size: cp.size, root: b64encode(cp.root) };
    }
    default:
      throw new Usage(`unknown command ${command}`);
  }
}

function main(): number {
  let out: Obj;
  let code: number;
  try {
    out = run(process.argv.slice(2));
    code = out.ok ? 0 : 1;
  } catch (err) {
    if (err instanceof VerifyError) {
      out = { ok: false, code: err.code, message: err.message };
      code = 1;
    } else if (err instanceof Usage) {
      out = { ok: false, code: "usage", message: err.message };
      code = 2;
    } else {
      out = { ok: false, code: "malformed", message: String(err) };
      code = 1;
    }
  }
  process.stdout.write(JSON.stringify(out) + "\n");
  return code;
}

process.exitCode = main();
