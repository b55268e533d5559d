import { describe, expect, it } from 'vitest';
import type { OptionDecl } from '../electron/ipc/contract.js';
import { formOptions, initialValues, optionErrors, optionTexts, unmetRequirement } from './options-model.js';

/** qcow2's kinds of declarations, local to these tests. */
const DECLS: OptionDecl[] = [
  { name: 'size', type: 'size', help: 'Virtual disk size', min: 0 },
  { name: 'compat', type: 'enum', values: ['0.10', '1.1'], default: '1.1', help: 'Compatibility level' },
  { name: 'lazy_refcounts', type: 'bool', default: false, help: 'Postpone refcount updates', requires: [{ option: 'compat', value: '1.1' }] },
  { name: 'cluster_size', type: 'size', default: 65536, min: 512, max: 2 * 1024 * 1024, powerOfTwo: true, help: 'Cluster size' },
  { name: 'refcount_bits', type: 'number', default: 16, min: 1, max: 64, powerOfTwo: true, help: 'Refcount width' },
  { name: 'backing_file', type: 'string', help: 'Base image' },
];

describe('option forms', () => {
  it('leave size to the wizard and prefill defaults', () => {
    expect(formOptions(DECLS).map((d) => d.name)).not.toContain('size');
    expect(initialValues(DECLS)).toEqual({ compat: '1.1', lazy_refcounts: false, cluster_size: '65536', refcount_bits: '16', backing_file: '' });
  });

  it('send nothing when every field keeps its default', () => {
    expect(optionTexts(DECLS, initialValues(DECLS))).toEqual({});
  });

  it('send changed values as -o texts, sizes in bytes', () => {
    const v = { ...initialValues(DECLS), lazy_refcounts: true, cluster_size: '4K', backing_file: '/b.qcow2' };
    expect(optionTexts(DECLS, v)).toEqual({ lazy_refcounts: 'on', cluster_size: '4096', backing_file: '/b.qcow2' });
  });

  it('explain and drop an option whose requirement is unmet', () => {
    const lazy = DECLS[2]!;
    const v = { ...initialValues(DECLS), compat: '0.10', lazy_refcounts: true };
    expect(unmetRequirement(lazy, DECLS, v)).toBe('Needs compat=1.1');
    expect(unmetRequirement(lazy, DECLS, initialValues(DECLS))).toBeUndefined();
    expect(optionTexts(DECLS, v)).toEqual({ compat: '0.10' });
  });

  it('check min, max, power of two and syntax with the CLI parser', () => {
    const v = initialValues(DECLS);
    expect(optionErrors(DECLS, v)).toEqual({});
    expect(optionErrors(DECLS, { ...v, cluster_size: '3000' })).toEqual({ cluster_size: 'must be a power of two' });
    expect(optionErrors(DECLS, { ...v, cluster_size: '256' })).toEqual({ cluster_size: 'must be at least 512' });
    expect(optionErrors(DECLS, { ...v, cluster_size: '4M' })).toEqual({ cluster_size: `must be at most ${2 * 1024 * 1024}` });
    expect(optionErrors(DECLS, { ...v, cluster_size: 'big' })).toEqual({ cluster_size: 'not a size' });
    expect(optionErrors(DECLS, { ...v, refcount_bits: '1.5' })).toEqual({ refcount_bits: 'not a whole number' });
  });
});
