/** The test vectors docs/protocol.md gives client writers in other languages are what the code computes. */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FrameType, capabilityOf, checksumOf, encodeControl, encodeHeader, encodeRecord } from '../../transports/index.js';

const doc = readFileSync(new URL('../../docs/protocol.md', import.meta.url), 'utf8');
/** the prose with its line breaks as spaces */
const flat = doc.replace(/\s+/g, ' ');
const hex = (b: Buffer): string => b.toString('hex').replace(/(..)(?!$)/g, '$1 ');
/** The hex bytes the document shows after `label`, on its line (and the next when it goes on). */
const shown = (label: string): string => {
  const at = doc.indexOf(`\n${label} `);
  expect(at, label).toBeGreaterThan(-1);
  const lines = doc.slice(at + 1).split('\n');
  const bytes = (line: string): string[] => line.match(/(?<![0-9a-z{:"])\b[0-9a-f]{2}\b(?![0-9a-z])/g) ?? [];
  const first = bytes(lines[0]!.slice(label.length));
  const next = /^\s+[0-9a-f]{2} /.test(lines[1]!) ? bytes(lines[1]!) : [];
  return [...first, ...next].join(' ');
};

describe('docs/protocol.md test vectors', () => {
  it('the run directory name', () => {
    expect(flat).toContain(`run \`r1\`, token \`example-token\` → \`${capabilityOf('r1', 'example-token')}\``);
  });
  it('the checksum', () => {
    expect(flat).toContain(`the empty stream → \`${checksumOf(Buffer.alloc(0))}\``);
    expect(flat).toContain(`\`hello\` → \`${checksumOf(Buffer.from('hello'))}\``);
  });
  it('the frames of a whole stream, and a record', () => {
    expect(shown('HELLO')).toBe(hex(encodeControl(FrameType.HELLO, 0, { v: 1 })));
    expect(shown('DATA')).toBe(hex(Buffer.concat([encodeHeader(FrameType.DATA, 0, 5), Buffer.from('hello')])));
    expect(shown('END')).toBe(hex(encodeControl(FrameType.END, 0, { length: 5, checksum: checksumOf(Buffer.from('hello')) })));
    expect(shown('ACK')).toBe(hex(encodeControl(FrameType.ACK, 0, { length: 5 })));
    expect(doc).toContain(`\`${hex(encodeRecord({ word: 'a', n: 1 })).replace(/^((?:.. ){3}..) /, '$1  ')}\``);
  });
});
