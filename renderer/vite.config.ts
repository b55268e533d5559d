// Vite config for the renderer. Used by scripts/build.mjs (Vite's JS API) and
// by `npx vite --config renderer/vite.config.ts` for a dev server
// (then run Electron with PLATTER_RENDERER_URL=http://127.0.0.1:5173/).
// JSX uses Vite's built-in transform, which honours tsconfig's
// "jsx": "react-jsx"; no React plugin needed for a build.
import { fileURLToPath } from 'node:url';
import { defineConfig, type Plugin } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

// The dev server injects CSS as <style> elements from JS, which the page's
// style-src 'self' forbids. Relax that one directive for `vite serve` only;
// built output keeps index.html's CSP unchanged (electron/security.test.ts).
function devStyleCsp(): Plugin {
  return {
    name: 'platter-dev-style-csp',
    apply: 'serve',
    transformIndexHtml: (html) => html.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'"),
  };
}

export default defineConfig({
  root: here,
  base: './',
  // No public/ folder; keep Vite from looking for one in renderer/.
  publicDir: false,
  clearScreen: false,
  plugins: [devStyleCsp()],
  build: {
    outDir: fileURLToPath(new URL('../dist/renderer', import.meta.url)),
    emptyOutDir: true,
    // Electron ships a current Chromium.
    target: 'chrome130',
    reportCompressedSize: false,
    rollupOptions: {
      // TanStack Table marks its hooks 'use client' for React Server Components,
      // which a client-only bundle has no use for.
      onwarn(warning, warn) {
        if (warning.code !== 'MODULE_LEVEL_DIRECTIVE') warn(warning);
      },
    },
  },
  server: {
    host: '127.0.0.1',
    strictPort: true,
  },
});
