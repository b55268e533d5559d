/** Which pages count as our renderer, for main-bridge.ts's sender check (kept apart: testable without Electron). */

/**
 * Whether `url` is the renderer loaded from `rendererUrl`: the same file for
 * file:// (any query or fragment), the same origin for a local dev server.
 */
export function isRendererUrl(url: string, rendererUrl: string): boolean {
  if (!URL.canParse(url) || !URL.canParse(rendererUrl)) return false;
  const got = new URL(url);
  const want = new URL(rendererUrl);
  if (want.protocol === 'file:') {
    return got.protocol === 'file:' && got.host === want.host && got.pathname === want.pathname;
  }
  return got.origin === want.origin;
}
