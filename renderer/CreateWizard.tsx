// New image: format, path, size and the format's options (generated form).
// On success the new image opens in the inspector.
import { useState, type FormEvent } from 'react';
import { parseSize } from '../core/options/size.js';
import { api, errorText } from './api.js';
import { useRequest } from './use-request.js';
import { useCreatableFormats } from './formats.js';
import { initialValues, optionErrors, optionTexts, type FormValues } from './options-model.js';
import { OptionsForm } from './OptionsForm.js';
import { PathField } from './PathField.js';
import { useApp } from './store.js';

/** The size field's bytes, or the sentence saying what is wrong. */
export function sizeBytes(text: string): { bytes?: number; error?: string } {
  try {
    return { bytes: parseSize(text) };
  } catch (e) {
    return { error: errorText(e) };
  }
}

export function CreateWizard() {
  const { formats, error: loadError } = useCreatableFormats();
  const openImage = useApp((s) => s.openImage);
  const [formatName, setFormatName] = useState('qcow2');
  const [path, setPath] = useState('');
  const [size, setSize] = useState('10G');
  const [values, setValues] = useState<FormValues | undefined>();
  const { busy, error, setError, run } = useRequest();

  const format = formats?.find((f) => f.name === formatName) ?? formats?.[0];
  const decls = format?.createOptions ?? [];
  const current = values ?? initialValues(decls);
  const errors = optionErrors(decls, current);
  const sizeCheck = sizeBytes(size);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!format) return;
    if (!path.trim()) return setError('Give the new image a path.');
    if (sizeCheck.error) return setError(sizeCheck.error);
    if (Object.keys(errors).length) return setError('Fix the options marked above.');
    await run(async () => {
      const r = await api().create({ path: path.trim(), format: format.name, size: sizeCheck.bytes!, options: optionTexts(decls, current) });
      openImage(r.path);
    });
  };

  if (loadError) return <p className="error" role="alert">{loadError}</p>;
  if (!formats || !format) return <p className="muted" role="status">Loading formats…</p>;
  return (
    <form className="wizard" aria-labelledby="create-title" onSubmit={(e) => void submit(e)} noValidate>
      <h2 id="create-title">Create an image</h2>
      <div className="field">
        <label htmlFor="create-format">Format</label>
        <select id="create-format" value={format.name} onChange={(e) => { setFormatName(e.target.value); setValues(undefined); }}>
          {formats.map((f) => (
            <option key={f.name} value={f.name}>{f.name} — {f.description}</option>
          ))}
        </select>
      </div>
      <PathField id="create-path" label="Path of the new image" value={path} onChange={setPath} dialog="save" onError={setError} />
      <div className="field">
        <label htmlFor="create-size">Virtual size</label>
        <input id="create-size" type="text" value={size} onChange={(e) => setSize(e.target.value)} aria-describedby="create-size-help"
          aria-invalid={sizeCheck.error ? true : undefined} />
        <p className="help" id="create-size-help">
          {sizeCheck.error ?? `Bytes, or with a suffix: 512M, 10G, 2T. That is ${sizeCheck.bytes!.toLocaleString('en')} bytes.`}
        </p>
      </div>
      <OptionsForm idPrefix="create-opt" decls={decls} values={current} errors={errors} onChange={setValues} />
      {error ? <p className="error" role="alert">{error}</p> : null}
      <div className="actions">
        <button type="submit" className="primary" disabled={busy}>{busy ? 'Creating…' : 'Create'}</button>
      </div>
    </form>
  );
}
