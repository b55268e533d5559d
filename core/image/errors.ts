/**
 * The one error type the engine throws. A small, stable set of kinds lets the
 * CLI pick exit codes and the app pick icons without parsing messages; the
 * context says where it happened; `message` is one human sentence.
 */
export const ERROR_KINDS = [
  'Io',
  'InvalidFormat',
  'Corrupt',
  'Unsupported',
  'OutOfBounds',
  'Locked',
  'Auth',
  'Cancelled',
  'NotFound',
  'InvalidArgument',
] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];

export interface ErrorContext {
  /** The file or URL the error is about, as the user named it. */
  path?: string;
  /** Byte offset (guest or host, as `op` says) where it happened. */
  offset?: number;
  /** What was being done: 'read', 'write', 'open', 'create', ... */
  op?: string;
}

/** The shape that crosses IPC and `--output=json`. */
export interface SerializedError extends ErrorContext {
  kind: ErrorKind;
  message: string;
}

export class BlockError extends Error {
  readonly kind: ErrorKind;
  readonly context: ErrorContext;

  constructor(kind: ErrorKind, message: string, context: ErrorContext = {}, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'BlockError';
    this.kind = kind;
    this.context = context;
  }

  /** Same error, with context filled in where it was missing. */
  withContext(context: ErrorContext): BlockError {
    return new BlockError(this.kind, this.message, { ...context, ...this.context }, this.cause);
  }

  toJSON(): SerializedError {
    return { kind: this.kind, message: this.message, ...this.context };
  }
}

/** Human sentences for the system errors users actually meet. */
const ERRNO_SENTENCES: Record<string, [ErrorKind, string]> = {
  ENOENT: ['NotFound', 'no such file or directory'],
  EACCES: ['Io', 'permission denied'],
  EPERM: ['Io', 'operation not permitted'],
  EROFS: ['Io', 'read-only file system'],
  ENOSPC: ['Io', 'no space left on device'],
  EDQUOT: ['Io', 'disk quota exceeded'],
  EEXIST: ['InvalidArgument', 'file already exists'],
  EISDIR: ['InvalidArgument', 'is a directory, not an image file'],
  ENOTDIR: ['NotFound', 'a component of the path is not a directory'],
  EFBIG: ['Io', 'file too large for this file system'],
  EMFILE: ['Io', 'too many open files'],
  EBUSY: ['Io', 'device or resource busy'],
  EAGAIN: ['Locked', 'resource temporarily unavailable'],
  EIO: ['Io', 'input/output error (the device reported a failure)'],
  ENXIO: ['NotFound', 'no such device or address'],
  ENODEV: ['NotFound', 'no such device'],
  EINVAL: ['InvalidArgument', 'invalid argument'],
};

/**
 * Turns anything thrown (a Node system error, an AbortError, a BlockError) into
 * a BlockError with the given context. Unknown errors keep their message but
 * are marked Io: we never hide what happened.
 */
export function toBlockError(err: unknown, context: ErrorContext = {}): BlockError {
  if (err instanceof BlockError) return err.withContext(context);
  if (isAbortError(err)) return new BlockError('Cancelled', 'cancelled', context, err);
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code && ERRNO_SENTENCES[code]) {
    const [kind, sentence] = ERRNO_SENTENCES[code];
    return new BlockError(kind, sentence, context, err);
  }
  const message = err instanceof Error ? err.message : String(err);
  return new BlockError('Io', message, context, err);
}

export function isAbortError(err: unknown): boolean {
  return (
    err instanceof Error &&
    (err.name === 'AbortError' || (err as NodeJS.ErrnoException).code === 'ABORT_ERR')
  );
}

/** Throws a Cancelled BlockError if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new BlockError('Cancelled', 'cancelled');
}
