/** How anything thrown on the engine side crosses to the UI: `{ kind, message }`, one line. */
import type { ZodError } from 'zod';
import { toBlockError } from '../../core/image/errors.js';
import type { ErrorShape } from './contract.js';

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, ' ').trim();

/** A BlockError's kind, and the CLI's sentence without its `platter: ` prefix: "FILE: what is wrong". */
export function errorShape(err: unknown): ErrorShape {
  const e = toBlockError(err);
  const where = e.context.path ? `${e.context.path}: ` : '';
  return { kind: e.kind, message: oneLine(where + e.message) };
}

/** The first issue of a failed parse, naming the field: "input.size: expected number". */
export function validationError(side: 'input' | 'output', err: ZodError): ErrorShape {
  const issue = err.issues[0];
  const field = [side, ...(issue?.path ?? []).map(String)].join('.');
  return { kind: 'Validation', message: oneLine(`${field}: ${issue?.message ?? 'invalid'}`) };
}
