/**
 * Sluice errors (transports/errors.ts): stable codes, causes and details kept, names, JSON form,
 * code checks that work across library copies, and the translation of OS / stream errors.
 */
import { describe, it, expect } from 'vitest';
import {
  ConnectError,
  ErrorCodes,
  ProtocolError,
  RequestError,
  SluiceError,
  StreamError,
  codeOf,
  fromSystemError,
  hasCode,
  isErrorCode,
  type ErrorCode,
} from '../../transports/index.js';

/** An error as Node's net / fs / stream modules raise them: an Error with an errno-style code. */
function systemError(code: string, message = `${code.toLowerCase()} happened`): NodeJS.ErrnoException {
  const err: NodeJS.ErrnoException = new Error(message);
  err.code = code;
  return err;
}

describe('SluiceError', () => {
  it('keeps code, message, cause and details', () => {
    const cause = new Error('low-level');
    const details = { channel: 7, offset: 1024 };
    const err = new SluiceError(ErrorCodes.CORRUPT, 'checksum mismatch', { cause, details });
    expect(err.code).toBe('SLUICE_CORRUPT');
    expect(err.message).toBe('checksum mismatch');
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ channel: 7, offset: 1024 });
    expect(err).toBeInstanceOf(Error);
  });

  it('has no cause and no details when none are given', () => {
    const err = new SluiceError(ErrorCodes.TIMEOUT, 'too slow');
    expect('cause' in err).toBe(false);
    expect(err.details).toBeUndefined();
    expect('cause' in new SluiceError(ErrorCodes.TIMEOUT, 'too slow', { cause: undefined })).toBe(false);
  });

  it('keeps falsy but present causes', () => {
    expect(new SluiceError(ErrorCodes.TIMEOUT, 'x', { cause: 0 }).cause).toBe(0);
    expect(new SluiceError(ErrorCodes.TIMEOUT, 'x', { cause: null }).cause).toBeNull();
  });

  it.each([
    ['SluiceError', () => new SluiceError(ErrorCodes.INVALID, 'm')],
    ['StreamError', () => new StreamError(ErrorCodes.TRUNCATED, 'm')],
    ['ProtocolError', () => new ProtocolError('m')],
    ['ConnectError', () => new ConnectError(ErrorCodes.UNAVAILABLE, 'm')],
    ['RequestError', () => new RequestError(ErrorCodes.NOT_FOUND, 'm')],
  ] as const)('is named after its class: %s', (name, make) => {
    const err = make();
    expect(err.name).toBe(name);
    expect(String(err)).toBe(`${name}: m`);
    expect(err.stack?.startsWith(`${name}: m`)).toBe(true);
    expect(err).toBeInstanceOf(SluiceError);
  });

  it('ProtocolError always carries SLUICE_PROTOCOL, with cause and details', () => {
    const cause = new Error('bad byte');
    const err = new ProtocolError('garbage', { cause, details: { header: '00' } });
    expect(err.code).toBe('SLUICE_PROTOCOL');
    expect(err.cause).toBe(cause);
    expect(err.details).toEqual({ header: '00' });
  });

  it('toJSON gives code and message, and details when there are some', () => {
    const withDetails = new StreamError(ErrorCodes.TRUNCATED, 'cut', { cause: new Error('hidden'), details: { channel: 3 } });
    expect(withDetails.toJSON()).toEqual({ code: 'SLUICE_TRUNCATED', message: 'cut', details: { channel: 3 } });
    const plain = new ProtocolError('bad');
    expect(plain.toJSON()).toStrictEqual({ code: 'SLUICE_PROTOCOL', message: 'bad' });
    expect(Object.keys(plain.toJSON())).toEqual(['code', 'message']);
  });

  it('serialises through JSON.stringify to a form whose code survives the trip', () => {
    const err = new ConnectError(ErrorCodes.UNAVAILABLE, 'no daemon', { cause: new Error('ECONNREFUSED'), details: { endpoint: '/run/sluice.sock' } });
    const back = JSON.parse(JSON.stringify(err)) as { code: unknown; message: unknown; details: unknown; stack?: unknown; cause?: unknown };
    expect(back).toEqual({ code: 'SLUICE_UNAVAILABLE', message: 'no daemon', details: { endpoint: '/run/sluice.sock' } });
    expect(hasCode(back, ErrorCodes.UNAVAILABLE)).toBe(true);
    expect(isErrorCode(back.code)).toBe(true);
  });
});

describe('error codes', () => {
  const all = Object.values(ErrorCodes);

  it('are unique SLUICE_* strings', () => {
    expect(all.length).toBeGreaterThanOrEqual(13);
    expect(new Set(all).size).toBe(all.length);
    for (const code of all) expect(code).toMatch(/^SLUICE_[A-Z_]+$/);
  });

  it('include the codes the channel contract names', () => {
    expect(all).toEqual(
      expect.arrayContaining(['SLUICE_TRUNCATED', 'SLUICE_PRODUCER_ABORTED', 'SLUICE_CONSUMER_GONE', 'SLUICE_CORRUPT', 'SLUICE_PROTOCOL']),
    );
  });

  it('isErrorCode accepts every code', () => {
    for (const code of all) expect(isErrorCode(code), code).toBe(true);
  });

  it.each([['SLUICE_NOPE'], ['sluice_truncated'], ['EPIPE'], [''], [undefined], [null], [42], [{}], [['SLUICE_TRUNCATED']]])(
    'isErrorCode refuses %j',
    (value) => {
      expect(isErrorCode(value)).toBe(false);
    },
  );

  it('hasCode matches Sluice errors, errors from another library copy, and plain objects by code', () => {
    expect(hasCode(new ProtocolError('x'), ErrorCodes.PROTOCOL)).toBe(true);
    expect(hasCode(new ProtocolError('x'), ErrorCodes.CORRUPT)).toBe(false);
    // a SluiceError from a second copy of the library: not instanceof, same code
    class OtherCopyError extends Error {
      readonly code = 'SLUICE_TRUNCATED';
    }
    expect(hasCode(new OtherCopyError('cut'), ErrorCodes.TRUNCATED)).toBe(true);
    expect(hasCode({ code: 'SLUICE_TIMEOUT' }, ErrorCodes.TIMEOUT)).toBe(true);
  });

  it.each([[null], [undefined], ['SLUICE_PROTOCOL'], [42], [{}], [new Error('no code')], [{ code: 'sluice_protocol' }]])(
    'hasCode is false for %s',
    (value) => {
      expect(hasCode(value, ErrorCodes.PROTOCOL)).toBe(false);
    },
  );

  it('hasCode matches any string code (an errno too), and without a code whether the error carries one of Sluice\'s', () => {
    expect(hasCode(systemError('ENOENT'), 'ENOENT')).toBe(true);
    expect(hasCode(systemError('ENOENT'), 'ENXIO')).toBe(false);
    expect(hasCode(new ProtocolError('x'))).toBe(true);
    expect(hasCode({ code: 'SLUICE_TIMEOUT' })).toBe(true);
    expect(hasCode(systemError('ECONNRESET'))).toBe(false);
    expect(hasCode({ code: 'SLUICE_NO_SUCH_CODE' })).toBe(false);
    expect(hasCode(undefined)).toBe(false);
  });

  it('codeOf gives the string code of anything thrown, and undefined when there is none', () => {
    expect(codeOf(new ProtocolError('x'))).toBe(ErrorCodes.PROTOCOL);
    expect(codeOf(systemError('EPIPE'))).toBe('EPIPE');
    expect(codeOf({ code: 'ERR_STREAM_PREMATURE_CLOSE' })).toBe('ERR_STREAM_PREMATURE_CLOSE');
    for (const none of [null, undefined, 'ENOENT', 42, {}, new Error('no code'), { code: 404 }]) expect(codeOf(none)).toBeUndefined();
  });
});

describe('fromSystemError', () => {
  function expectTranslated(err: SluiceError, code: ErrorCode, cls: typeof SluiceError, cause: unknown): void {
    expect(err).toBeInstanceOf(cls);
    expect(err.code).toBe(code);
    expect(err.cause).toBe(cause);
  }

  it.each(['EPIPE', 'ECONNRESET', 'ERR_STREAM_PREMATURE_CLOSE', 'ERR_STREAM_DESTROYED'])(
    'translates %s seen by a producer into SLUICE_CONSUMER_GONE',
    (errno) => {
      const cause = systemError(errno);
      const err = fromSystemError(cause, 'producer', { channel: 4 });
      expectTranslated(err, ErrorCodes.CONSUMER_GONE, StreamError, cause);
      expect(err.message).toContain(errno);
      expect(err.details).toMatchObject({ channel: 4, errno });
    },
  );

  it.each([
    ['EPIPE', systemError('EPIPE')],
    ['ECONNRESET', systemError('ECONNRESET')],
    ['EIO', systemError('EIO')],
    ['an Error without code', new Error('socket closed')],
    ['a string', 'went away'],
    ['undefined', undefined],
  ])('translates any error seen by a consumer (%s) into SLUICE_TRUNCATED', (_what, cause) => {
    const err = fromSystemError(cause, 'consumer');
    expectTranslated(err, ErrorCodes.TRUNCATED, StreamError, cause);
  });

  it('names the low-level message in the consumer-side error', () => {
    expect(fromSystemError(new Error('socket closed'), 'consumer').message).toContain('socket closed');
    expect(fromSystemError('went away', 'consumer').message).toContain('went away');
  });

  it.each(['ENOENT', 'ECONNREFUSED', 'ENXIO', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTDIR'])(
    'translates %s while dialling into SLUICE_UNAVAILABLE',
    (errno) => {
      const cause = systemError(errno);
      const err = fromSystemError(cause, 'dial', { endpoint: '/tmp/x.sock' });
      expectTranslated(err, ErrorCodes.UNAVAILABLE, ConnectError, cause);
      expect(err.message).toContain(errno);
      expect(err.details).toMatchObject({ endpoint: '/tmp/x.sock', errno });
    },
  );

  it('translates an abort while dialling into SLUICE_ABORTED', () => {
    const cause = systemError('ABORT_ERR', 'The operation was aborted');
    expectTranslated(fromSystemError(cause, 'dial'), ErrorCodes.ABORTED, ConnectError, cause);
  });

  it('translates any other dial failure into SLUICE_UNAVAILABLE, keeping its message', () => {
    const cause = new Error('something odd');
    const err = fromSystemError(cause, 'dial');
    expectTranslated(err, ErrorCodes.UNAVAILABLE, ConnectError, cause);
    expect(err.message).toContain('something odd');
  });

  it('leaves errno out of details when the error has none', () => {
    const err = fromSystemError(new Error('plain'), 'consumer', { channel: 1 });
    expect(err.details?.['errno']).toBeUndefined();
    expect(err.details?.['channel']).toBe(1);
  });

  it.each(['producer', 'consumer', 'dial'] as const)('passes an existing SluiceError through unchanged (%s)', (role) => {
    const original = new StreamError(ErrorCodes.PRODUCER_ABORTED, 'producer gave up', { details: { channel: 2 } });
    const err = fromSystemError(original, role, { channel: 99 });
    expect(err).toBe(original);
    expect(err.code).toBe('SLUICE_PRODUCER_ABORTED');
    expect(err.details).toEqual({ channel: 2 });
  });

  it.each(['producer', 'consumer', 'dial'] as const)('passes a Sluice error from another library copy through by its code (%s)', (role) => {
    const foreign = Object.assign(new Error('from another copy'), { code: 'SLUICE_CORRUPT' });
    expect(fromSystemError(foreign, role)).toBe(foreign);
  });

  it('does not mutate the low-level error it translates', () => {
    const cause = systemError('EPIPE');
    const before = { message: cause.message, code: cause.code };
    fromSystemError(cause, 'producer');
    expect({ message: cause.message, code: cause.code }).toEqual(before);
  });
});
