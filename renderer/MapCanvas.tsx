// The allocation map: one canvas column per pixel, coloured by the kind that
// covers most of its bytes (map-model.ts), with a legend and a tooltip that
// names the extent under the pointer (or under the keyboard cursor: arrows
// move it, Home/End jump).
import { useEffect, useMemo, useRef, useState, type KeyboardEvent, type MouseEvent } from 'react';
import type { MapExtent } from '../electron/ipc/contract.js';
import { formatSize } from '../core/options/size.js';
import { aggregateColumns, extentAt, extentKind, kindIndex, KIND_LABEL, KINDS, NO_KIND } from './map-model.js';

const HEIGHT = 48;

/** Re-renders when the colour scheme flips, so the canvas picks up the new palette. */
function useColorScheme(): boolean {
  const query = '(prefers-color-scheme: dark)';
  const [dark, setDark] = useState(() => matchMedia(query).matches);
  useEffect(() => {
    const mq = matchMedia(query);
    const onChange = () => setDark(mq.matches);
    mq.addEventListener('change', onChange);
    return () => mq.removeEventListener('change', onChange);
  }, []);
  return dark;
}

function useWidth(ref: React.RefObject<HTMLElement | null>): number {
  const [width, setWidth] = useState(0);
  useEffect(() => {
    const el = ref.current;
    if (!el) return;
    const ro = new ResizeObserver(([entry]) => setWidth(Math.floor(entry!.contentRect.width)));
    ro.observe(el);
    return () => ro.disconnect();
  }, [ref]);
  return width;
}

export function MapCanvas({ extents, size }: { extents: readonly MapExtent[]; size: number }) {
  const wrap = useRef<HTMLDivElement>(null);
  const canvas = useRef<HTMLCanvasElement>(null);
  const width = useWidth(wrap);
  const dark = useColorScheme();
  const dpr = typeof devicePixelRatio === 'number' ? devicePixelRatio : 1;
  const pixels = Math.max(0, Math.round(width * dpr));
  const columns = useMemo(() => aggregateColumns(extents, size, pixels), [extents, size, pixels]);
  const totals = useMemo(() => {
    const t = new Array<number>(KINDS.length).fill(0);
    for (const e of extents) t[kindIndex(e)]! += e.length;
    return t;
  }, [extents]);
  /** Byte offset under the pointer or keyboard cursor, and where to show the tooltip (CSS px). */
  const [cursor, setCursor] = useState<{ offset: number; x: number } | undefined>();

  useEffect(() => {
    const c = canvas.current;
    if (!c || pixels === 0) return;
    c.width = pixels;
    c.height = Math.round(HEIGHT * dpr);
    const ctx = c.getContext('2d');
    if (!ctx) return;
    const css = getComputedStyle(c);
    const colour = KINDS.map((k) => css.getPropertyValue(`--map-${k}`).trim() || '#888');
    ctx.fillStyle = css.getPropertyValue('--map-empty').trim() || '#ccc';
    ctx.fillRect(0, 0, c.width, c.height);
    // One fillRect per run of equal columns, not per column.
    let runStart = 0;
    for (let p = 1; p <= pixels; p++) {
      if (p < pixels && columns[p] === columns[runStart]) continue;
      const k = columns[runStart]!;
      if (k !== NO_KIND) {
        ctx.fillStyle = colour[k]!;
        ctx.fillRect(runStart, 0, p - runStart, c.height);
      }
      runStart = p;
    }
  }, [columns, pixels, dpr, dark]);

  const hovered = cursor ? extentAt(extents, cursor.offset) : undefined;

  const onMove = (e: MouseEvent<HTMLCanvasElement>) => {
    const rect = e.currentTarget.getBoundingClientRect();
    const x = Math.min(Math.max(0, e.clientX - rect.left), rect.width - 1);
    setCursor({ offset: Math.floor((x / rect.width) * size), x });
  };
  const onKey = (e: KeyboardEvent<HTMLCanvasElement>) => {
    const step = Math.max(1, Math.floor(size / 100));
    const at = cursor?.offset ?? 0;
    const next =
      e.key === 'ArrowRight' ? Math.min(size - 1, at + step)
      : e.key === 'ArrowLeft' ? Math.max(0, at - step)
      : e.key === 'Home' ? 0
      : e.key === 'End' ? size - 1
      : e.key === 'Escape' ? undefined
      : null;
    if (next === null) return;
    e.preventDefault();
    setCursor(next === undefined ? undefined : { offset: next, x: (next / size) * width });
  };

  const summary = KINDS.map((k, i) => (totals[i] ? `${KIND_LABEL[k]} ${formatSize(totals[i]!)}` : ''))
    .filter(Boolean)
    .join(', ');
  return (
    <div className="map">
      <div className="map-canvas-wrap" ref={wrap}>
        <canvas
          ref={canvas}
          className="map-canvas"
          data-testid="map-canvas"
          tabIndex={0}
          role="img"
          aria-label={`Allocation map of ${formatSize(size)}: ${summary || 'empty'}. Arrow keys inspect extents.`}
          onMouseMove={onMove}
          onMouseLeave={() => setCursor(undefined)}
          onKeyDown={onKey}
          onBlur={() => setCursor(undefined)}
        />
        {cursor && hovered ? (
          <div className="map-tooltip" role="status" style={{ left: `${Math.min(cursor.x, Math.max(0, width - 220))}px` }}>
            <div><b>{KIND_LABEL[extentKind(hovered)]}</b>{hovered.depth > 0 ? ` (backing depth ${hovered.depth})` : ''}</div>
            <div>Start {formatBytes(hovered.start)}</div>
            <div>Length {formatBytes(hovered.length)}</div>
            <div>Host offset {hovered.offset !== undefined ? formatBytes(hovered.offset) : '—'}</div>
          </div>
        ) : null}
      </div>
      <ul className="map-legend" aria-label="Map legend">
        {KINDS.map((k, i) => (
          <li key={k}>
            <span className={`swatch swatch-${k}`} aria-hidden="true" />
            {KIND_LABEL[k]} <span className="muted">{formatSize(totals[i]!)}</span>
          </li>
        ))}
      </ul>
      <p className="muted">{extents.length.toLocaleString('en')} extents</p>
    </div>
  );
}

/** Exact bytes, with the rounded size alongside when they differ. */
export function formatBytes(n: number): string {
  const exact = `${n.toLocaleString('en')} B`;
  return n < 1024 ? exact : `${formatSize(n)} (${exact})`;
}
