/**
 * The one contract between the UI and the engine: every method the renderer
 * may call, with the schema of its input and of its output, and the events
 * the engine pushes. Electron's main process (ipcMain), the preload (which
 * exposes `window.platter`, generated from this object) and the web host
 * (WebSocket) are all driven by it, and all validate against the same
 * schemas: the renderer is untrusted, so every argument is checked again on
 * arrival, and the renderer checks what it gets back.
 *
 * Errors cross as { kind, message } (BlockError's kinds, or 'Validation').
 */
import { z } from 'zod';

/** A local path: absolute, no NUL, bounded. */
const Path = z
  .string()
  .min(1)
  .max(4096)
  .refine((p) => !p.includes('\0'), 'a path cannot contain NUL')
  // Relative paths would resolve against the host process's folder, not anything the user sees.
  .refine((p) => /^(\/|[A-Za-z]:[\\/]|\\\\)/.test(p), 'a path must be absolute');
const FormatName = z.string().regex(/^[a-z0-9]{1,16}$/, 'a format name is lower-case letters and digits');
/** `-o` options as text, exactly as the CLI takes them: name -> value. */
const OptionTexts = z.record(z.string().regex(/^[a-z][a-z0-9_.-]{0,63}$/), z.string().max(4096));
const Bytes = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);

export const ErrorShape = z.object({ kind: z.string(), message: z.string() });
export type ErrorShape = z.infer<typeof ErrorShape>;

/** A create option as core/options declares it: what the forms are generated from. */
export const OptionDecl = z.object({
  name: z.string(),
  type: z.enum(['size', 'number', 'bool', 'string', 'enum']),
  help: z.string(),
  default: z.union([z.string(), z.number(), z.boolean()]).optional(),
  values: z.array(z.string()).optional(),
  min: z.number().optional(),
  max: z.number().optional(),
  powerOfTwo: z.boolean().optional(),
  requires: z.array(z.object({ option: z.string(), value: z.union([z.string(), z.number(), z.boolean()]) })).optional(),
});
export type OptionDecl = z.infer<typeof OptionDecl>;

export const FormatSummary = z.object({
  name: z.string(),
  description: z.string(),
  /** Whether images of this format can be created (convert targets too). */
  canCreate: z.boolean(),
  createOptions: z.array(OptionDecl),
});

/** `qemu-img info --output=json`'s object (the keys the UI shows; others pass through). */
export const ImageInfo = z.looseObject({
  filename: z.string(),
  format: z.string(),
  'virtual-size': Bytes,
  'actual-size': Bytes.optional(),
  'cluster-size': Bytes.optional(),
  'dirty-flag': z.boolean(),
  'backing-filename': z.string().optional(),
  'full-backing-filename': z.string().optional(),
  'backing-filename-format': z.string().optional(),
  'format-specific': z.object({ type: z.string(), data: z.record(z.string(), z.unknown()) }).optional(),
  snapshots: z
    .array(z.looseObject({ id: z.string(), name: z.string(), 'vm-state-size': Bytes, 'date-sec': z.number(), 'vm-clock-nsec': z.number() }))
    .optional(),
});
export type ImageInfo = z.infer<typeof ImageInfo>;

/** One extent of `qemu-img map --output=json`, plus whether it is compressed. */
export const MapExtent = z.object({
  start: Bytes,
  length: Bytes,
  depth: z.number().int().min(0),
  present: z.boolean(),
  zero: z.boolean(),
  data: z.boolean(),
  compressed: z.boolean(),
  offset: Bytes.optional(),
});
export type MapExtent = z.infer<typeof MapExtent>;

export const CheckResult = z.object({
  filename: z.string(),
  format: z.string(),
  corruptions: z.number(),
  leaks: z.number(),
  checkErrors: z.number(),
  corruptionsFixed: z.number(),
  leaksFixed: z.number(),
  imageEndOffset: z.number(),
  totalClusters: z.number(),
  allocatedClusters: z.number(),
  fragmentedClusters: z.number(),
  compressedClusters: z.number(),
  /** What check printed, one line per problem. */
  log: z.array(z.string()),
});

export const JobState = z.enum(['running', 'done', 'failed', 'cancelled']);
export const JobInfo = z.object({
  id: z.string(),
  kind: z.enum(['convert']),
  title: z.string(),
  target: z.string(),
  state: JobState,
  done: Bytes,
  total: Bytes,
  /** Recent throughput, for speed and time left. */
  bytesPerSecond: z.number().min(0),
  startedAt: z.number(),
  error: ErrorShape.optional(),
});
export type JobInfo = z.infer<typeof JobInfo>;

/** A block device of the machine (core/io/devices.ts). */
export const Device = z.object({
  name: z.string(),
  path: z.string(),
  size: Bytes,
  kind: z.enum(['disk', 'cdrom', 'loop']),
  removable: z.boolean(),
  readOnly: z.boolean(),
  model: z.string().optional(),
  backingFile: z.string().optional(),
});
export const DeviceList = z.object({ supported: z.boolean(), devices: z.array(Device) });
export type DeviceList = z.infer<typeof DeviceList>;

const method = <I extends z.ZodType, O extends z.ZodType>(input: I, output: O) => ({ input, output });

export const contract = {
  /** Every format, with its create options. */
  formats: method(z.object({}), z.array(FormatSummary)),
  /** info (with the backing chain: top first). */
  info: method(z.object({ path: Path, backingChain: z.boolean().optional() }), z.array(ImageInfo)),
  /** The allocation map, merged as qemu-img merges it. */
  map: method(z.object({ path: Path }), z.array(MapExtent)),
  /** Room a new image needs: empty of `size`, or a copy of `source`. */
  measure: method(
    z.object({ format: FormatName, options: OptionTexts, size: Bytes.optional(), source: Path.optional() }),
    z.object({ required: Bytes, fullyAllocated: Bytes, bitmaps: Bytes.optional() }),
  ),
  /** Free bytes on the file system that would hold `path`. */
  freeSpace: method(z.object({ path: Path }), z.object({ bytes: Bytes })),
  create: method(z.object({ path: Path, format: FormatName, size: Bytes, options: OptionTexts }), z.object({ path: z.string() })),
  check: method(z.object({ path: Path, repair: z.enum(['none', 'leaks', 'all']) }), CheckResult),
  /** What the app can do to this image beyond reading it (the Inspector's buttons). */
  actions: method(z.object({ path: Path }), z.object({ compact: z.boolean() })),
  /** Drops the stored blocks that read as zeros and packs the file (VBoxManage compact); its size before and after. */
  compact: method(z.object({ path: Path }), z.object({ before: Bytes, after: Bytes })),
  /** Starts a convert job; progress comes as `job` events. */
  startConvert: method(
    z.object({
      sources: z.array(Path).min(1).max(64),
      target: Path,
      targetFormat: FormatName,
      options: OptionTexts,
      compress: z.boolean(),
    }),
    z.object({ jobId: z.string() }),
  ),
  cancelJob: method(z.object({ jobId: z.string().max(64) }), z.object({ cancelled: z.boolean() })),
  listJobs: method(z.object({}), z.array(JobInfo)),
  /** The machine's drives (the start of drive imaging); changes come as `devices` events. */
  devices: method(z.object({}), DeviceList),
  /** Native dialogs (Electron only; the web host answers null and the UI asks for a typed path). */
  openDialog: method(z.object({ title: z.string().max(200).optional() }), z.object({ path: z.string().nullable() })),
  saveDialog: method(z.object({ title: z.string().max(200).optional(), defaultPath: z.string().max(4096).optional() }), z.object({ path: z.string().nullable() })),
} as const;

export type Contract = typeof contract;
export type MethodName = keyof Contract;
export type Input<M extends MethodName> = z.infer<Contract[M]['input']>;
export type Output<M extends MethodName> = z.infer<Contract[M]['output']>;

/** What the engine pushes. */
export const events = {
  /** A job changed: progress (a few times a second at most), or its end. */
  job: JobInfo,
  /** A drive came or went (or changed its media). */
  devices: DeviceList,
} as const;
export type EventName = keyof typeof events;
export type EventPayload<E extends EventName> = z.infer<(typeof events)[E]>;

/** The API the renderer sees, whichever transport carries it. */
export type PlatterApi = {
  [M in MethodName]: (input: Input<M>) => Promise<Output<M>>;
} & {
  on<E extends EventName>(event: E, listener: (payload: EventPayload<E>) => void): () => void;
};

/** Thrown on the calling side when the other side answered with an error. */
export class ApiError extends Error {
  constructor(
    readonly kind: string,
    message: string,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}
