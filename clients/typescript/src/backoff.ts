/** Jittered exponential backoff: the n-th wait is uniform in [0, min(cap, base·2ⁿ)]
 * ("full jitter"), so clients that lost the same node do not all come back at once. */
export class Backoff {
  private attempt = 0;

  constructor(
    readonly base = 0.1,
    readonly cap = 5,
  ) {}

  /** Seconds to wait before the next try. */
  next(): number {
    const ceiling = Math.min(this.cap, this.base * 2 ** this.attempt);
    this.attempt += 1;
    return Math.random() * ceiling;
  }

  reset(): void {
    this.attempt = 0;
  }
}

export const sleep = (seconds: number, signal?: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
