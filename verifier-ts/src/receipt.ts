/** Broker receipts, signed alone or as leaves of a group commit's RFC 6962 tree. */
import type { KeyObject } from "node:crypto";
import { b64decode, b64encode, ed25519Verify, utf8 } from "./bytes.js";
import { fail, VerifyError } from "./errors.js";
import { canonicalBytes } from "./jcs.js";
import { leafHash, rootFromInclusion } from "./merkle.js";

export const RECEIPT_CONTEXT = utf8("vn-exchange/receipt/v1\n");
export const RECEIPT_GROUP_CONTEXT = utf8("vn-exchange/receipt-group/v1\n");

export interface SignedReceipt {
  receipt: Record<string, unknown>;
  signature: string;
  group_size?: number;
  index?: number;
  path?: string[];
}

export const receiptBytes = (receipt: Record<string, unknown>): Buffer =>
  Buffer.concat([RECEIPT_CONTEXT, canonicalBytes(receipt)]);

/** The bytes the broker's signature covers for this receipt. */
export function signedMessage(signed: SignedReceipt): Buffer {
  const size = signed.group_size ?? 1;
  const index = signed.index ?? 0;
  const path = signed.path ?? [];
  if (size === 1) {
    if (index || path.length) fail("receipt_invalid", "a receipt signed alone has no group path");
    return receiptBytes(signed.receipt);
  }
  let root: Buffer;
  try {
    root = rootFromInclusion(leafHash(receiptBytes(signed.receipt)), index, size,
                             path.map((p) => b64decode(p)));
  } catch (err) {
    if (err instanceof VerifyError) fail("receipt_invalid", "the receipt's group path does not fit its group");
    throw err;
  }
  return Buffer.concat([RECEIPT_GROUP_CONTEXT, canonicalBytes({ root: b64encode(root), size })]);
}

export function verifyReceipt(signed: SignedReceipt, brokerKey: KeyObject): void {
  const message = signedMessage(signed);
  if (!ed25519Verify(brokerKey, message, b64decode(signed.signature, "receipt_invalid"))) {
    fail("receipt_invalid", "the broker's receipt signature does not verify");
  }
}
