/**
 * Bounded parallelism for drivers. Compressing a chunk's clusters or grains
 * all at once would hold a deflate state (hundreds of KiB) per cluster, for
 * every chunk the copy pipeline has in flight: memory grows with the
 * request, not with the work two cores can do.
 */

/** Clusters or grains one request compresses at once. */
export const COMPRESS_CONCURRENCY = 4;

/** fn(0) .. fn(count - 1), at most `limit` running at a time; results in order. */
export async function mapLimited<R>(count: number, limit: number, fn: (i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(count);
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      out[i] = await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, count) }, worker));
  return out;
}
