/** RFC 6962 §2.1 hashing; inclusion and consistency verification per RFC 9162 §2.1.3.2 and
 * §2.1.4.2. */
import { equal, sha256 } from "./bytes.js";
import { fail } from "./errors.js";

const LEAF = Buffer.from([0x00]);
const NODE = Buffer.from([0x01]);

export const leafHash = (entry: Uint8Array): Buffer => sha256(LEAF, entry);
export const nodeHash = (left: Uint8Array, right: Uint8Array): Buffer => sha256(NODE, left, right);
export const EMPTY_ROOT = sha256();

/** MTH over already-hashed leaves: pair left to right, an odd last node moves up unchanged. */
export function merkleRoot(leaves: Uint8Array[]): Buffer {
  if (leaves.length === 0) return EMPTY_ROOT;
  let level: Buffer[] = leaves.map((l) => Buffer.from(l));
  while (level.length > 1) {
    const next: Buffer[] = [];
    for (let i = 0; i + 1 < level.length; i += 2) next.push(nodeHash(level[i]!, level[i + 1]!));
    if (level.length % 2) next.push(level[level.length - 1]!);
    level = next;
  }
  return level[0]!;
}

/** The root implied by a leaf hash, its index in a tree of `size` leaves and its audit path. */
export function rootFromInclusion(leaf: Uint8Array, index: number, size: number, proof: Uint8Array[]): Buffer {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0 || index >= size) {
    fail("proof_invalid", `leaf index ${index} outside tree of size ${size}`);
  }
  // BigInt: the bit operations must not wrap at 2**31
  let fn = BigInt(index);
  let sn = BigInt(size - 1);
  let r: Buffer = Buffer.from(leaf);
  for (const p of proof) {
    if (sn === 0n) fail("proof_invalid", "inclusion proof longer than the tree");
    if (fn & 1n || fn === sn) {
      r = nodeHash(p, r);
      while (fn !== 0n && !(fn & 1n)) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) fail("proof_invalid", "inclusion proof shorter than the tree");
  return r;
}

export function verifyInclusion(leaf: Uint8Array, index: number, size: number, proof: Uint8Array[], root: Uint8Array): void {
  if (!equal(rootFromInclusion(leaf, index, size, proof), root)) {
    fail("proof_invalid", `inclusion proof for leaf ${index} does not match the root`);
  }
}

/** RFC 9162 §2.1.4.2: the tree of size `newSize` extends the one of size `oldSize`. */
export function verifyConsistency(oldSize: number, newSize: number, oldRoot: Uint8Array, newRoot: Uint8Array, proof: Uint8Array[]): void {
  const bad = (): never => fail("proof_invalid", `consistency proof ${oldSize} -> ${newSize} does not verify`);
  if (!Number.isSafeInteger(oldSize) || !Number.isSafeInteger(newSize) || oldSize < 0 || oldSize > newSize) bad();
  if (oldSize === newSize) {
    if (proof.length || !equal(oldRoot, newRoot)) bad();
    return;
  }
  if (oldSize === 0) {
    if (proof.length) bad();
    return;
  }
  if (!proof.length) bad();
  const path: Buffer[] = proof.map((p) => Buffer.from(p));
  let fn = BigInt(oldSize - 1);
  let sn = BigInt(newSize - 1);
  if ((BigInt(oldSize) & BigInt(oldSize - 1)) === 0n) path.unshift(Buffer.from(oldRoot));
  while (fn & 1n) {
    fn >>= 1n;
    sn >>= 1n;
  }
  let fr: Buffer = path[0]!;
  let sr: Buffer = path[0]!;
  for (const c of path.slice(1)) {
    if (sn === 0n) bad();
    if (fn & 1n || fn === sn) {
      fr = nodeHash(c, fr);
      sr = nodeHash(c, sr);
      if (!(fn & 1n)) {
        while (fn !== 0n && !(fn & 1n)) {
          fn >>= 1n;
          sn >>= 1n;
        }
      }
    } else {
      sr = nodeHash(sr, c);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n || !equal(fr, oldRoot) || !equal(sr, newRoot)) bad();
}
