/**
 * A strict, linear check of msgpack bytes, run before they are decoded.
 *
 * msgpackr is fast and lenient: it turns the never-used byte 0xc1, timestamps of a wrong size
 * and its own extensions (shared references, sets, errors, regular expressions, ...) into
 * objects, and a few bytes of shared references can make any walk over the result exponential.
 * Bytes from a peer are untrusted, so before decoding them this checks, in one pass over the
 * type bytes (string and binary bodies are skipped, not read), that they hold exactly one
 * value, without 0xc1, nested at most `maxDepth` deep, using only the extensions allowed.
 */
import { ProtocolError } from './errors.js';

/** Which extension types (signed type byte, body length) a check allows. */
export type ExtensionPolicy = (type: number, length: number) => boolean;

export const NO_EXTENSIONS: ExtensionPolicy = () => false;

/** The msgpack timestamp (-1, 4/8/12 bytes) and msgpackr's typed arrays (0x74). */
export const RECORD_EXTENSIONS: ExtensionPolicy = (type, length) => (type === -1 && (length === 4 || length === 8 || length === 12)) || (type === 0x74 && length >= 1);

export const DEFAULT_MAX_DEPTH = 64;

/** Throws ProtocolError unless `bytes` is exactly one acceptable msgpack value. */
export function checkMsgpack(bytes: Uint8Array, extensions: ExtensionPolicy, maxDepth = DEFAULT_MAX_DEPTH): void {
  const end = bytes.length;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let p = 0;
  const fail = (why: string): never => {
    throw new ProtocolError(`invalid msgpack at byte ${p}: ${why}`);
  };
  const need = (n: number): void => {
    if (n > end - p) fail(`needs ${n} more bytes, ${end - p} left`);
  };
  const u8 = (): number => (need(1), view.getUint8(p++));
  const u16 = (): number => {
    need(2);
    p += 2;
    return view.getUint16(p - 2);
  };
  const u32 = (): number => {
    need(4);
    p += 4;
    return view.getUint32(p - 4);
  };
  const skip = (n: number): void => {
    need(n);
    p += n;
  };
  const ext = (length: number): void => {
    need(1);
    const type = view.getInt8(p++);
    if (!extensions(type, length)) fail(`extension type ${type} of ${length} bytes is not allowed`);
    skip(length);
  };

  const open: number[] = []; // items still to read in each enclosing container
  let remaining = 1;
  for (;;) {
    if (remaining === 0) {
      if (open.length === 0) break;
      remaining = open.pop()!;
      continue;
    }
    remaining--;
    const b = u8();
    let items = 0;
    if (b <= 0x7f || b >= 0xe0) {
      // fixint
    } else if (b <= 0x8f) items = (b & 0x0f) * 2;
    else if (b <= 0x9f) items = b & 0x0f;
    else if (b <= 0xbf) skip(b & 0x1f);
    else {
      switch (b) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          break;
        case 0xc1:
          p--;
          fail('0xc1 is never used in msgpack');
          break;
        case 0xc4:
        case 0xd9:
          skip(u8());
          break;
        case 0xc5:
        case 0xda:
          skip(u16());
          break;
        case 0xc6:
        case 0xdb:
          skip(u32());
          break;
        case 0xc7:
          ext(u8());
          break;
        case 0xc8:
          ext(u16());
          break;
        case 0xc9:
          ext(u32());
          break;
        case 0xcc:
        case 0xd0:
          skip(1);
          break;
        case 0xcd:
        case 0xd1:
          skip(2);
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip(4);
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip(8);
          break;
        case 0xd4:
          ext(1);
          break;
        case 0xd5:
          ext(2);
          break;
        case 0xd6:
          ext(4);
          break;
        case 0xd7:
          ext(8);
          break;
        case 0xd8:
          ext(16);
          break;
        case 0xdc:
          items = u16();
          break;
        case 0xdd:
          items = u32();
          break;
        case 0xde:
          items = u16() * 2;
          break;
        case 0xdf:
          items = u32() * 2;
          break;
      }
    }
    if (items > 0) {
      // every item takes at least a byte: refuse impossible counts before looping over them
      if (items > end - p) fail(`container announces ${items} items, only ${end - p} bytes left`);
      if (open.length >= maxDepth) fail(`nested deeper than ${maxDepth}`);
      open.push(remaining);
      remaining = items;
    }
  }
  if (p !== end) fail(`${end - p} bytes after the value`);
}
