/** RFC 8785 JSON Canonicalization Scheme.
 *
 * ECMAScript already writes numbers (Number::toString) and strings (JSON.stringify) exactly as
 * RFC 8785 §3.2.2 asks; the scheme adds only the key order: UTF-16 code units, which is what
 * the default Array.prototype.sort compares (§3.2.3). */
import { fail } from "./errors.js";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export function canonicalize(value: unknown): string {
  if (value === null) return "null";
  switch (typeof value) {
    case "boolean":
      return value ? "true" : "false";
    case "number":
      if (!Number.isFinite(value)) fail("no_canonical_form", `${value} has no JSON form`);
      return JSON.stringify(value); // -0 is written 0, 100.0 is 100, 1e-7 is 1e-7
    case "string":
      return JSON.stringify(value);
    case "object": {
      if (Array.isArray(value)) return `[${value.map(canonicalize).join(",")}]`;
      const obj = value as Record<string, unknown>;
      const keys = Object.keys(obj).sort(); // UTF-16 code unit order
      return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalize(obj[k])}`).join(",")}}`;
    }
    default:
      return fail("no_canonical_form", `a ${typeof value} has no JSON form`);
  }
}

export const canonicalBytes = (value: unknown): Buffer => Buffer.from(canonicalize(value), "utf8");
