// A typed path, plus a native Browse button under Electron (the web host has
// no dialogs: it answers null, so the button is not shown there).
import { api, errorText, hasNativeDialogs } from './api.js';

interface Props {
  id: string;
  label: string;
  value: string;
  onChange: (path: string) => void;
  /** Which native dialog Browse opens. */
  dialog: 'open' | 'save';
  onError?: (message: string) => void;
}

export function PathField({ id, label, value, onChange, dialog, onError }: Props) {
  const browse = async () => {
    try {
      const r = dialog === 'open' ? await api().openDialog({ title: label }) : await api().saveDialog({ title: label, defaultPath: value || undefined });
      if (r.path) onChange(r.path);
    } catch (e) {
      onError?.(errorText(e));
    }
  };
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      <div className="path-row">
        <input id={id} type="text" value={value} spellCheck={false} autoComplete="off" placeholder="/path/to/image"
          onChange={(e) => onChange(e.target.value)} />
        {hasNativeDialogs() ? <button type="button" onClick={() => void browse()}>Browse…</button> : null}
      </div>
    </div>
  );
}
