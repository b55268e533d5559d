// Convert: sources, target and its format and options -> pre-flight (room
// needed vs free space) -> progress from the job's events, with Cancel ->
// result (done: the target is checked; failed/cancelled: why).
import { useEffect, useState, type FormEvent } from 'react';
import type { Output } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { api, errorText } from './api.js';
import { useRequest } from './use-request.js';
import { useCreatableFormats } from './formats.js';
import { initialValues, optionErrors, optionTexts, type FormValues } from './options-model.js';
import { OptionsForm } from './OptionsForm.js';
import { PathField } from './PathField.js';
import { useApp } from './store.js';

/** Formats whose convert can write compressed clusters (`-c`). */
const COMPRESSIBLE = new Set(['qcow2']);

interface Plan {
  sources: string[];
  target: string;
  targetFormat: string;
  options: Record<string, string>;
  compress: boolean;
}

interface Preflight {
  required: number;
  free: number;
}

/** "1 min 5 s", "42 s". */
function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '—';
  const s = Math.round(seconds);
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

export function ConvertWizard() {
  const { formats, error: loadError } = useCreatableFormats();
  const [sourcesText, setSourcesText] = useState('');
  const [target, setTarget] = useState('');
  const [formatName, setFormatName] = useState('qcow2');
  const [values, setValues] = useState<FormValues | undefined>();
  const [compress, setCompress] = useState(false);
  const [step, setStep] = useState<'form' | 'preflight' | 'job'>('form');
  const [plan, setPlan] = useState<Plan>();
  const [preflight, setPreflight] = useState<Preflight>();
  const [jobId, setJobId] = useState<string>();
  const { busy, error, setError, run } = useRequest();

  const format = formats?.find((f) => f.name === formatName) ?? formats?.[0];
  const decls = format?.createOptions ?? [];
  const current = values ?? initialValues(decls);
  const errors = optionErrors(decls, current);

  const next = async (e: FormEvent) => {
    e.preventDefault();
    if (!format) return;
    const sources = sourcesText.split('\n').map((s) => s.trim()).filter(Boolean);
    if (sources.length === 0) return setError('Give at least one source image.');
    if (!target.trim()) return setError('Give the target a path.');
    if (Object.keys(errors).length) return setError('Fix the options marked above.');
    const p: Plan = {
      sources,
      target: target.trim(),
      targetFormat: format.name,
      options: optionTexts(decls, current),
      compress: compress && COMPRESSIBLE.has(format.name),
    };
    await run(async () => {
      // A concatenation needs about the sum of what each source needs.
      const measures = await Promise.all(p.sources.map((source) => api().measure({ format: p.targetFormat, options: p.options, source })));
      const free = await api().freeSpace({ path: p.target });
      setPlan(p);
      setPreflight({ required: measures.reduce((sum, m) => sum + m.required, 0), free: free.bytes });
      setStep('preflight');
    });
  };

  const start = async () => {
    if (!plan) return;
    await run(async () => {
      const r = await api().startConvert(plan);
      setJobId(r.jobId);
      setStep('job');
    });
  };

  if (loadError) return <p className="error" role="alert">{loadError}</p>;
  if (!formats || !format) return <p className="muted" role="status">Loading formats…</p>;

  if (step === 'job' && jobId && plan) {
    return <ConvertJob jobId={jobId} target={plan.target} onAgain={() => { setStep('form'); setJobId(undefined); }} />;
  }

  if (step === 'preflight' && plan && preflight) {
    const fits = preflight.required <= preflight.free;
    return (
      <section className="wizard" aria-labelledby="convert-title">
        <h2 id="convert-title">Convert: check before starting</h2>
        <dl className="facts">
          <dt>Sources</dt><dd>{plan.sources.join(', ')}</dd>
          <dt>Target</dt><dd>{plan.target} ({plan.targetFormat}{plan.compress ? ', compressed' : ''})</dd>
          <dt>Room needed</dt><dd data-testid="required">{formatSize(preflight.required)}</dd>
          <dt>Free space there</dt><dd>{formatSize(preflight.free)}</dd>
        </dl>
        {fits ? (
          <p className="ok">The target fits on its file system.</p>
        ) : (
          <p className="warning" role="alert">
            The target needs {formatSize(preflight.required)} but only {formatSize(preflight.free)} is free there: the convert will
            probably fail part way.
          </p>
        )}
        {error ? <p className="error" role="alert">{error}</p> : null}
        <div className="actions">
          <button type="button" onClick={() => setStep('form')}>Back</button>
          <button type="button" className="primary" disabled={busy} onClick={() => void start()}>Start convert</button>
        </div>
      </section>
    );
  }

  return (
    <form className="wizard" aria-labelledby="convert-title" onSubmit={(e) => void next(e)} noValidate>
      <h2 id="convert-title">Convert an image</h2>
      <div className="field">
        <label htmlFor="convert-sources">Source images</label>
        <textarea id="convert-sources" rows={3} value={sourcesText} spellCheck={false} aria-describedby="convert-sources-help"
          onChange={(e) => setSourcesText(e.target.value)} />
        <p className="help" id="convert-sources-help">One path per line; several sources are joined one after another.</p>
      </div>
      <PathField id="convert-target" label="Target path" value={target} onChange={setTarget} dialog="save" onError={setError} />
      <div className="field">
        <label htmlFor="convert-format">Target format</label>
        <select id="convert-format" value={format.name} onChange={(e) => { setFormatName(e.target.value); setValues(undefined); }}>
          {formats.map((f) => (
            <option key={f.name} value={f.name}>{f.name} — {f.description}</option>
          ))}
        </select>
      </div>
      {COMPRESSIBLE.has(format.name) ? (
        <div className="field field-bool">
          <label htmlFor="convert-compress">Compress</label>
          <input id="convert-compress" type="checkbox" checked={compress} onChange={(e) => setCompress(e.target.checked)}
            aria-describedby="convert-compress-help" />
          <p className="help" id="convert-compress-help">Write compressed clusters: smaller, slower to write and to read.</p>
        </div>
      ) : null}
      <OptionsForm idPrefix="convert-opt" decls={decls} values={current} errors={errors} onChange={setValues} />
      {error ? <p className="error" role="alert">{error}</p> : null}
      <div className="actions">
        <button type="submit" className="primary" disabled={busy}>{busy ? 'Measuring…' : 'Next'}</button>
      </div>
    </form>
  );
}

/** A running convert, then its result. */
function ConvertJob({ jobId, target, onAgain }: { jobId: string; target: string; onAgain: () => void }) {
  const job = useApp((s) => s.jobs[jobId]);
  const openImage = useApp((s) => s.openImage);
  const [check, setCheck] = useState<{ result?: Output<'check'>; error?: string }>();
  const [cancelError, setCancelError] = useState<string>();

  useEffect(() => {
    if (job?.state !== 'done') return;
    let live = true;
    api().check({ path: target, repair: 'none' }).then(
      (result) => live && setCheck({ result }),
      (e) => live && setCheck({ error: errorText(e) }),
    );
    return () => {
      live = false;
    };
  }, [job?.state, target]);

  const cancel = () => api().cancelJob({ jobId }).catch((e) => setCancelError(errorText(e)));

  if (!job || job.state === 'running') {
    const pct = job && job.total > 0 ? (job.done / job.total) * 100 : 0;
    const left = job && job.bytesPerSecond > 0 ? (job.total - job.done) / job.bytesPerSecond : Infinity;
    return (
      <section className="wizard" aria-labelledby="progress-title">
        <h2 id="progress-title">Converting to {target}</h2>
        <progress id="convert-progress" max={100} value={pct} aria-label="Convert progress" />
        <p role="status" data-testid="progress-text">
          {job && job.total > 0 ? `${pct.toFixed(0)}% — ${formatSize(job.done)} of ${formatSize(job.total)}` : 'Starting…'}
          {job && job.bytesPerSecond > 0 ? `, ${formatSize(job.bytesPerSecond)}/s, ${duration(left)} left` : ''}
        </p>
        {cancelError ? <p className="error" role="alert">{cancelError}</p> : null}
        <div className="actions">
          <button type="button" onClick={() => void cancel()}>Cancel</button>
        </div>
      </section>
    );
  }

  const r = check?.result;
  return (
    <section className="wizard" aria-labelledby="result-title">
      <h2 id="result-title">
        {job.state === 'done' ? 'Convert finished' : job.state === 'cancelled' ? 'Convert cancelled' : 'Convert failed'}
      </h2>
      {job.state === 'done' ? (
        <>
          <p>{target}</p>
          {!check ? <p className="muted" role="status">Checking the new image…</p> : null}
          {check?.error ? <p className="error" role="alert">Check failed: {check.error}</p> : null}
          {r ? (
            <div data-testid="check-result" role="status">
              {r.corruptions + r.leaks + r.checkErrors === 0 ? (
                <p className="ok">No errors were found on the image.</p>
              ) : (
                <p className="warning">
                  {r.corruptions} corruptions, {r.leaks} leaked clusters, {r.checkErrors} check errors.
                </p>
              )}
              {r.log.length ? <pre className="log">{r.log.join('\n')}</pre> : null}
            </div>
          ) : null}
          <div className="actions">
            <button type="button" className="primary" onClick={() => openImage(target)}>Open in inspector</button>
            <button type="button" onClick={onAgain}>Convert another</button>
          </div>
        </>
      ) : (
        <>
          <p className={job.state === 'failed' ? 'error' : 'muted'} role="alert">
            {job.error?.message ?? (job.state === 'cancelled' ? 'The convert was cancelled; no target was left behind.' : 'The convert failed.')}
          </p>
          <div className="actions">
            <button type="button" onClick={onAgain}>Back to the form</button>
          </div>
        </>
      )}
    </section>
  );
}
