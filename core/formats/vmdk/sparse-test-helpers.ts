/**
 * The hosted sparse header's field offsets, for tests that build or patch
 * VMDK files byte by byte: block/vmdk.c VMDK4Header, after the 4-byte magic;
 * little-endian. Kept apart from the driver's own parser so that the tests
 * do not read the file through the code they test.
 */
export const H = {
  magic: 0, //              "KDMV"
  version: 4, //            u32: 1..3
  flags: 8, //              u32: bit 0 newline test, 1 redundant GD, 2 zeroed grains, 16 compressed, 17 markers
  capacity: 12, //          u64: sectors
  grainSize: 20, //         u64: sectors per grain
  descriptorOffset: 28, //  u64: sector
  descriptorSize: 36, //    u64: sectors
  numGTEsPerGT: 44, //      u32
  rgdOffset: 48, //         u64: sector of the redundant grain directory
  gdOffset: 56, //          u64: sector of the grain directory
  overhead: 64, //          u64: sectors before the first grain
  uncleanShutdown: 72, //   u8
  newlineBytes: 73, //      "\n \r\n"
  compressAlgorithm: 77, // u16: 0 none, 1 deflate
} as const;
