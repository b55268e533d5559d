import { describe, expect, it } from 'vitest';
import { isRendererUrl } from './sender.js';

describe('isRendererUrl', () => {
  const built = 'file:///opt/Platter/resources/app.asar/dist/renderer/index.html';

  it('accepts the built renderer, whatever its fragment or query', () => {
    expect(isRendererUrl(built, built)).toBe(true);
    expect(isRendererUrl(`${built}#/jobs`, built)).toBe(true);
    expect(isRendererUrl(`${built}?x=1`, built)).toBe(true);
  });

  it('refuses other files, other schemes and junk', () => {
    expect(isRendererUrl('file:///tmp/evil.html', built)).toBe(false);
    expect(isRendererUrl('file:///opt/Platter/resources/app.asar/dist/renderer/other.html', built)).toBe(false);
    expect(isRendererUrl('file://server/opt/Platter/resources/app.asar/dist/renderer/index.html', built)).toBe(false);
    expect(isRendererUrl('https://evil.example/index.html', built)).toBe(false);
    expect(isRendererUrl('about:blank', built)).toBe(false);
    expect(isRendererUrl('not a url', built)).toBe(false);
  });

  it('accepts a dev server by origin only', () => {
    const dev = 'http://localhost:5173/';
    expect(isRendererUrl('http://localhost:5173/src/index.html#x', dev)).toBe(true);
    expect(isRendererUrl('http://localhost:5174/', dev)).toBe(false);
    expect(isRendererUrl('http://127.0.0.1:5173/', dev)).toBe(false);
    expect(isRendererUrl('https://localhost:5173/', dev)).toBe(false);
  });
});
