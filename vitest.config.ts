import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['core/**/*.test.ts', 'electron/**/*.test.ts', 'renderer/**/*.test.ts', 'e2e/**/*.test.ts'],
    // Image tests spawn qemu-img and write large sparse files: give them room,
    // and run files in separate processes so a stuck test cannot block others.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
