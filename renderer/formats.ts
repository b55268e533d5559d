/** The engine's formats, fetched once and shared by both wizards. */
import { useEffect, useState } from 'react';
import type { Output } from '../electron/ipc/contract.js';
import { api, errorText } from './api.js';

export type FormatList = Output<'formats'>;

let cached: Promise<FormatList> | undefined;

/** Formats that can be created (and so be convert targets), or the error that stopped the fetch. */
export function useCreatableFormats(): { formats?: FormatList; error?: string } {
  const [state, setState] = useState<{ formats?: FormatList; error?: string }>({});
  useEffect(() => {
    let live = true;
    cached ??= api().formats({});
    cached.then(
      (all) => live && setState({ formats: all.filter((f) => f.canCreate) }),
      (e) => {
        cached = undefined;
        if (live) setState({ error: errorText(e) });
      },
    );
    return () => {
      live = false;
    };
  }, []);
  return state;
}
