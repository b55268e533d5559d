/**
 * Create/amend options, declared once per format. The CLI's `-o k=v` parser
 * and `-o help`, and the app's forms, are all made from these declarations.
 */
import { BlockError } from '../image/errors.js';
import { parseSize } from './size.js';

export type OptionValue = string | number | boolean;
export type OptionValues = Record<string, OptionValue>;

interface BaseDecl {
  name: string;
  /** One line, shown in `-o help` and as the form field's hint. */
  help: string;
  /** Other options this one needs, e.g. lazy_refcounts needs compat=1.1. */
  requires?: readonly { option: string; value: OptionValue }[];
}

export type OptionDecl = BaseDecl &
  (
    | { type: 'size'; default?: number; min?: number; max?: number; powerOfTwo?: boolean }
    | { type: 'number'; default?: number; min?: number; max?: number; powerOfTwo?: boolean }
    | { type: 'bool'; default?: boolean }
    | { type: 'string'; default?: string }
    | { type: 'enum'; default?: string; values: readonly string[] }
  );

/** `-o help` shows each type as qemu-img does. */
const TYPE_LABEL: Record<OptionDecl['type'], string> = {
  size: '<size>',
  number: '<num>',
  bool: '<bool (on/off)>',
  string: '<str>',
  enum: '<str>',
};

/**
 * Splits "a=1,b=x,,y" into {a: '1', b: 'x,y'} (a doubled comma is a literal
 * comma, as in QEMU). Later keys win, so repeated -o flags can be merged by
 * joining them with commas.
 */
export function parseOptionList(text: string): Record<string, string> {
  // No prototype: "-o __proto__=x" must be an unknown option, not a no-op.
  const out: Record<string, string> = Object.create(null);
  let key = '';
  let value = '';
  let inValue = false;
  const flush = () => {
    if (!key && !inValue) return;
    if (!key) throw new BlockError('InvalidArgument', `invalid option list '${text}': an option has no name`);
    out[key] = inValue ? value : 'on';
    key = value = '';
    inValue = false;
  };
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === ',' && text[i + 1] === ',') {
      if (inValue) value += ',';
      else key += ',';
      i++;
    } else if (ch === ',') {
      flush();
    } else if (ch === '=' && !inValue) {
      inValue = true;
    } else if (inValue) {
      value += ch;
    } else {
      key += ch;
    }
  }
  flush();
  return out;
}

function parseBool(text: string): boolean | undefined {
  if (['on', 'yes', 'true', '1'].includes(text)) return true;
  if (['off', 'no', 'false', '0'].includes(text)) return false;
  return undefined;
}

function invalid(decl: OptionDecl, text: string, why: string): BlockError {
  return new BlockError('InvalidArgument', `invalid value '${text}' for option ${decl.name}: ${why}`);
}

/** Converts one option's text to its typed value, checking its own limits. */
export function parseOptionValue(decl: OptionDecl, text: string): OptionValue {
  switch (decl.type) {
    case 'bool': {
      const b = parseBool(text);
      if (b === undefined) throw invalid(decl, text, 'use on or off');
      return b;
    }
    case 'enum':
      if (!decl.values.includes(text)) throw invalid(decl, text, `allowed values are ${decl.values.join(', ')}`);
      return text;
    case 'string':
      return text;
    case 'size':
    case 'number': {
      let n: number;
      if (decl.type === 'size') {
        try {
          n = parseSize(text, decl.name);
        } catch (err) {
          throw invalid(decl, text, 'not a size');
        }
      } else {
        n = /^(\d+|0x[0-9a-f]+)$/i.test(text) ? Number(text) : NaN;
        if (!Number.isSafeInteger(n)) throw invalid(decl, text, 'not a whole number');
      }
      if (decl.min !== undefined && n < decl.min) throw invalid(decl, text, `must be at least ${decl.min}`);
      if (decl.max !== undefined && n > decl.max) throw invalid(decl, text, `must be at most ${decl.max}`);
      if (decl.powerOfTwo && (n <= 0 || (BigInt(n) & (BigInt(n) - 1n)) !== 0n)) {
        throw invalid(decl, text, 'must be a power of two');
      }
      return n;
    }
  }
}

/**
 * Validates user-given option texts against the declarations: unknown names,
 * bad values and unmet `requires` are all refused with a sentence that says
 * what would be accepted. Returns typed values with defaults filled in.
 */
export function resolveOptions(
  decls: readonly OptionDecl[],
  given: Record<string, string>,
  format: string,
): OptionValues {
  const byName = new Map(decls.map((d) => [d.name, d]));
  const out: OptionValues = Object.create(null);
  for (const [name, text] of Object.entries(given)) {
    const decl = byName.get(name);
    if (!decl) {
      const known = decls.map((d) => d.name).join(', ') || 'none';
      throw new BlockError('InvalidArgument', `${format} does not support option '${name}' (supported: ${known})`);
    }
    out[name] = parseOptionValue(decl, text);
  }
  for (const decl of decls) {
    if (!Object.hasOwn(out, decl.name) && decl.default !== undefined) out[decl.name] = decl.default;
  }
  for (const decl of decls) {
    // An option left off (or switched off) needs nothing.
    if (!Object.hasOwn(given, decl.name) || out[decl.name] === false) continue;
    for (const req of decl.requires ?? []) {
      if (out[req.option] !== req.value) {
        throw new BlockError(
          'InvalidArgument',
          `option ${decl.name} needs ${req.option}=${formatOptionValue(req.value)}`,
        );
      }
    }
  }
  return out;
}

export function formatOptionValue(v: OptionValue): string {
  return typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
}

/** The `-o help` text, in qemu-img's layout. */
export function formatOptionsHelp(decls: readonly OptionDecl[], heading = 'Supported options:'): string {
  const lines = [heading];
  for (const d of [...decls].sort((a, b) => a.name.localeCompare(b.name))) {
    let help = d.help;
    if (d.type === 'enum') help += ` (allowed values: ${d.values.join(', ')})`;
    lines.push(`  ${`${d.name}=${TYPE_LABEL[d.type]}`.padEnd(22)} - ${help}`);
  }
  return lines.join('\n') + '\n';
}
