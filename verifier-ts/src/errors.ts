/** Every failure carries a stable code, the same codes as the Python core (exchange.core.errors)
 * and the conformance vectors (schemas/vectors/). */
export class VerifyError extends Error {
  constructor(public readonly code: string, message: string) {
    super(message);
    this.name = "VerifyError";
  }
}

export function fail(code: string, message: string): never {
  throw new VerifyError(code, message);
}
