// A form's request to the engine: busy while it runs, its one-line error if it fails.
import { useState } from 'react';
import { errorText } from './api.js';

export function useRequest() {
  const [error, setError] = useState<string>();
  const [busy, setBusy] = useState(false);
  const run = async (request: () => Promise<void>) => {
    setBusy(true);
    setError(undefined);
    try {
      await request();
    } catch (err) {
      setError(errorText(err));
    } finally {
      setBusy(false);
    }
  };
  return { busy, error, setError, run };
}
