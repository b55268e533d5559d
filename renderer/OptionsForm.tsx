// A format's create options as form fields, generated from its declarations:
// bool -> checkbox, enum -> select, size/number -> text checked against
// min/max/powerOfTwo, string -> text. An option whose `requires` is unmet is
// disabled, with the reason next to it.
import type { OptionDecl } from '../electron/ipc/contract.js';
import { formOptions, unmetRequirement, type FormValues } from './options-model.js';

interface Props {
  idPrefix: string;
  decls: readonly OptionDecl[];
  values: FormValues;
  errors: Record<string, string>;
  onChange: (values: FormValues) => void;
}

function limits(d: OptionDecl): string {
  const parts = [];
  if (d.min !== undefined) parts.push(`at least ${d.min}`);
  if (d.max !== undefined) parts.push(`at most ${d.max}`);
  if (d.powerOfTwo) parts.push('a power of two');
  return parts.length ? ` (${parts.join(', ')})` : '';
}

export function OptionsForm({ idPrefix, decls, values, errors, onChange }: Props) {
  const shown = formOptions(decls);
  if (shown.length === 0) return <p className="muted">This format has no options.</p>;
  const set = (name: string, v: string | boolean) => onChange({ ...values, [name]: v });
  return (
    <fieldset className="options">
      <legend>Format options</legend>
      {shown.map((d) => {
        const id = `${idPrefix}-${d.name}`;
        const unmet = unmetRequirement(d, decls, values);
        const error = errors[d.name];
        const describedBy = [`${id}-help`, unmet ? `${id}-req` : '', error ? `${id}-err` : ''].filter(Boolean).join(' ');
        const v = values[d.name];
        let control;
        if (d.type === 'bool') {
          control = (
            <input id={id} type="checkbox" checked={v === true && !unmet} disabled={!!unmet} aria-describedby={describedBy}
              onChange={(e) => set(d.name, e.target.checked)} />
          );
        } else if (d.type === 'enum') {
          control = (
            <select id={id} value={String(v ?? '')} disabled={!!unmet} aria-describedby={describedBy} onChange={(e) => set(d.name, e.target.value)}>
              {(d.values ?? []).map((x) => (
                <option key={x} value={x}>{x}</option>
              ))}
            </select>
          );
        } else {
          control = (
            <input id={id} type="text" value={String(v ?? '')} disabled={!!unmet} aria-describedby={describedBy}
              aria-invalid={error ? true : undefined} inputMode={d.type === 'string' ? undefined : 'numeric'}
              placeholder={d.type === 'size' ? 'e.g. 64K' : undefined} onChange={(e) => set(d.name, e.target.value)} />
          );
        }
        return (
          <div className={`field field-${d.type}`} key={d.name}>
            <label htmlFor={id}>{d.name}</label>
            {control}
            <p className="help" id={`${id}-help`}>
              {d.help}
              {d.type === 'size' || d.type === 'number' ? limits(d) : ''}
            </p>
            {unmet ? <p className="requirement" id={`${id}-req`}>{unmet}: change that option first to set this one.</p> : null}
            {error ? <p className="error" id={`${id}-err`}>{error}</p> : null}
          </div>
        );
      })}
    </fieldset>
  );
}
