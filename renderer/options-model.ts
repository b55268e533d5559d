/**
 * Form state for a format's create options, generated from its declarations
 * (the same ones the CLI's `-o` reads). Values are checked with the CLI's own
 * parser (core/options), so the form accepts exactly what `-o` accepts.
 */
import type { OptionDecl } from '../electron/ipc/contract.js';
import { formatOptionValue, parseOptionValue, type OptionDecl as CoreDecl } from '../core/options/schema.js';

/** What each field holds: booleans for checkboxes, text for everything else. */
export type FormValues = Record<string, string | boolean>;

/** The options a form shows: `size` has its own field in the wizards. */
export const formOptions = (decls: readonly OptionDecl[]) => decls.filter((d) => d.name !== 'size');

const asCore = (d: OptionDecl) => ({ ...d, values: d.values ?? [] }) as CoreDecl;

export function initialValues(decls: readonly OptionDecl[]): FormValues {
  const out: FormValues = {};
  for (const d of formOptions(decls)) {
    if (d.type === 'bool') out[d.name] = d.default === true;
    else if (d.type === 'enum') out[d.name] = d.default !== undefined ? String(d.default) : (d.values?.[0] ?? '');
    else out[d.name] = d.default !== undefined ? String(d.default) : '';
  }
  return out;
}

/** A field's typed value, or undefined when it is empty or invalid. */
function typed(d: OptionDecl, v: string | boolean | undefined): string | number | boolean | undefined {
  if (typeof v === 'boolean') return v;
  if (v === undefined || v === '') return undefined;
  try {
    return parseOptionValue(asCore(d), v.trim());
  } catch {
    return undefined;
  }
}

/** Why an option can't be set now ("needs compat=1.1"), or undefined when its `requires` are met. */
export function unmetRequirement(d: OptionDecl, decls: readonly OptionDecl[], values: FormValues): string | undefined {
  for (const req of d.requires ?? []) {
    const other = decls.find((o) => o.name === req.option);
    const value = other ? (typed(other, values[other.name]) ?? other.default) : undefined;
    if (value !== req.value) return `Needs ${req.option}=${formatOptionValue(req.value)}`;
  }
  return undefined;
}

/** Per-field error sentences; an empty object when the form is valid. */
export function optionErrors(decls: readonly OptionDecl[], values: FormValues): Record<string, string> {
  const out: Record<string, string> = {};
  for (const d of formOptions(decls)) {
    const v = values[d.name];
    if (typeof v !== 'string' || v.trim() === '' || d.type === 'bool') continue;
    try {
      parseOptionValue(asCore(d), v.trim());
    } catch (e) {
      // "invalid value 'x' for option cluster_size: must be a power of two" -> the reason.
      const msg = e instanceof Error ? e.message : String(e);
      out[d.name] = msg.slice(msg.lastIndexOf(': ') + 2) || msg;
    }
  }
  return out;
}

/**
 * The `-o` texts to send: only options set to something other than their
 * default, and none whose requirement is unmet (the form shows them disabled).
 */
export function optionTexts(decls: readonly OptionDecl[], values: FormValues): Record<string, string> {
  const out: Record<string, string> = {};
  for (const d of formOptions(decls)) {
    if (unmetRequirement(d, decls, values)) continue;
    const v = typed(d, values[d.name]);
    if (v === undefined || v === d.default || (d.type === 'bool' && v === false && d.default === undefined)) continue;
    out[d.name] = formatOptionValue(v);
  }
  return out;
}
