/**
 * A workflow step in its own process (a StepJob from workflows.ts): a source, a middle step or a
 * sink of a chain, a broadcast, a gather or a shuffle, over any of the paths. Every step verifies
 * every byte it receives; middle steps stream (each chunk passed on as it comes), except on the
 * object store, where a step starts downloading only once its input's upload is complete — and
 * then streams its download into its own upload, S3 at its best.
 */
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { control } from '../client/control.js';
import { connect, type Sluice } from '../client/index.js';
import { ACK_SUFFIX, ChannelReader, ChannelWriter, MemoryTransport, codeOf, runDirectory } from '../transports/index.js';
import { BLOCK_BYTES, RECORD_BYTES, Verifier, WARM_EVENT_BYTES, WRITE_BYTES, cpuMsSince, makeBlock, nowNs } from './data.js';
import { dial, listenNet, serve, firstConnection } from './media.js';
import { send, type InputStat, type RunRef, type S3HopsJob, type StepCommand, type StepJob, type WfPath } from './protocol.js';
import { writeBytes } from './proc.js';

// ---- commands from the orchestrator ----

const queued: StepCommand[] = [];
const waiting = new Map<StepCommand['type'], (c: StepCommand) => void>();
process.on('message', (c: StepCommand) => {
  const w = waiting.get(c.type);
  if (w) {
    waiting.delete(c.type);
    w(c);
  } else queued.push(c);
});

function command<T extends StepCommand['type']>(type: T): Promise<Extract<StepCommand, { type: T }>> {
  const i = queued.findIndex((c) => c.type === type);
  if (i >= 0) return Promise.resolve(queued.splice(i, 1)[0] as Extract<StepCommand, { type: T }>);
  return new Promise((resolve) => waiting.set(type, resolve as (c: StepCommand) => void));
}

// ---- opening inputs and outputs on each path ----

/** The step's open channels: one Readable per input, one Writable per output, and how to finish them. */
interface Ends {
  inputs: Readable[];
  outputs: Writable[];
  /** end every output and wait until each consumer has all the bytes */
  close(): Promise<void>;
}

const isTransport = (path: WfPath): path is 'unix' | 'raw-fifo' => path === 'unix' || path === 'raw-fifo';

/** The run's token (on demand, known once the run was shared). */
let runToken: string | undefined;

/** Until this process holds `count` FIFOs of `runDir` open (their links in /proc/self/fd), for at most 2 s. */
async function fifosOpen(runDir: string, count: number): Promise<void> {
  for (const deadline = Date.now() + 2_000; Date.now() < deadline; await sleep(1)) {
    let open = 0;
    for (const fd of fs.readdirSync('/proc/self/fd')) {
      const target = (() => {
        try {
          return fs.readlinkSync(`/proc/self/fd/${fd}`);
        } catch {
          return '';
        }
      })();
      if (target.startsWith(runDir + '/') && !target.endsWith(ACK_SUFFIX)) open++;
    }
    if (open >= count) return;
  }
}

async function joinRun(job: StepJob, run: RunRef): Promise<Sluice> {
  runToken = run.token;
  return connect({ dir: job.dir!, run: run.id, step: job.step, token: run.token, instance: 0 });
}

/** Open the inputs (listening, for paths where consumers listen); resolves once producers may open their outputs. */
async function openInputs(job: StepJob, sl: Sluice | undefined): Promise<Readable[]> {
  if (isTransport(job.path)) {
    const served = await Promise.all(job.inputs.map((endpoint) => serve(job.path as 'unix' | 'raw-fifo', endpoint, undefined)));
    // resolved once the producer dialled: streamed in below
    return served.map((s) => lazyReadable(s.stream));
  }
  const inputs = job.inputs.map((from) => sl!.input(from));
  const runDir = runDirectory(job.dir!, sl!.run, job.run?.token ?? runToken!);
  // the client opens each input's end asynchronously, after input() returns: a producer that came
  // before would go to the relay instead of direct (fifo), or its stream would wait in the
  // consumer's daemon until the consumer listened (ws)
  if (job.path === 'ws') await socketsListening(runDir, sl!, job);
  else await fifosOpen(runDir, inputs.length);
  return inputs;
}

/** Until each input's Unix socket exists in the run directory (a cross-node channel's consumer end), for at most 2 s. */
async function socketsListening(runDir: string, sl: Sluice, job: StepJob): Promise<void> {
  const ends = sl.manifest.channels.filter((c) => c.to.step === job.step && c.to.index === 0 && job.inputs.includes(c.from.step)).map((c) => `${runDir}/${c.name}`);
  const listening = (file: string): boolean => {
    try {
      return fs.statSync(file).isSocket();
    } catch {
      return false;
    }
  };
  for (const deadline = Date.now() + 2_000; Date.now() < deadline && !ends.every(listening); ) await sleep(1);
}

/** A Readable for a stream that exists only once a producer has come. */
function lazyReadable(stream: Promise<Readable>): Readable {
  const out = new PassThrough({ highWaterMark: 1024 * 1024 });
  stream.then(
    (s) => {
      s.on('error', (err) => out.destroy(err));
      s.pipe(out);
    },
    (err: Error) => out.destroy(err),
  );
  return out;
}

async function openOutputs(job: StepJob, sl: Sluice | undefined): Promise<Pick<Ends, 'outputs' | 'close'>> {
  if (isTransport(job.path)) {
    const dialed = await Promise.all(job.outputs.map((endpoint) => dial(job.path as 'unix' | 'raw-fifo', endpoint, undefined)));
    return { outputs: dialed.map((d) => d.out), close: async () => void (await Promise.all(dialed.map((d) => d.close()))) };
  }
  const outputs = job.outputs.map((to) => sl!.output(to));
  // an empty write completes once the output's channel is open (direct, or to the relay)
  await Promise.all(outputs.map((o) => new Promise<void>((resolve, reject) => o.write(Buffer.alloc(0), (err) => (err ? reject(err) : resolve())))));
  return {
    outputs,
    close: async () => {
      for (const o of outputs) o.end();
      await Promise.all(outputs.map((o) => finished(o)));
    },
  };
}

// ---- moving bytes ----

/** Write `chunk` to every output; resolves when each can take more (undefined when all can at once). */
function writeAll(outputs: Writable[], chunk: Buffer): Promise<void> | undefined {
  const full = outputs.filter((o) => !o.write(chunk));
  if (full.length === 0) return undefined;
  return Promise.all(full.map((o) => once(o, 'drain'))).then(() => undefined);
}

/** The block stream, `bytes` of it to every output (each output's stream starts at the block's start). Returns hrtime at the first write. */
async function pumpAll(outputs: Writable[], block: Buffer, bytes: number): Promise<number> {
  const startNs = nowNs();
  for (let sent = 0, off = 0; sent < bytes; ) {
    const n = Math.min(WRITE_BYTES, bytes - sent, BLOCK_BYTES - off);
    const wait = writeAll(outputs, block.subarray(off, off + n));
    sent += n;
    off = (off + n) % BLOCK_BYTES;
    if (wait) await wait;
  }
  return startNs;
}

/** Read `input` to its end, verifying it against the block, handing each chunk to `forward` (back-pressure honoured). */
async function consume(input: Readable, block: Buffer, forward: ((chunk: Buffer) => Promise<void> | undefined) | undefined): Promise<InputStat> {
  const verifier = new Verifier(block);
  let firstByteNs = 0;
  input.on('data', (chunk: Buffer) => {
    if (firstByteNs === 0) firstByteNs = nowNs();
    verifier.check(chunk);
    const wait = forward?.(chunk);
    if (wait) {
      input.pause();
      void wait.then(() => input.resume());
    }
  });
  await finished(input);
  return statOf(verifier, firstByteNs, nowNs());
}

const statOf = (v: Verifier, firstByteNs: number, lastByteNs: number): InputStat => ({
  received: v.received,
  verified: v.ok,
  ...(v.firstMismatchAt !== undefined && { mismatchAt: v.firstMismatchAt }),
  firstByteNs,
  lastByteNs,
});

// ---- the step ----

export async function runStep(job: StepJob): Promise<void> {
  const cpuStart = process.cpuUsage();
  let diskStart = writeBytes('self');
  // made before the clock starts: every process has its own copy
  const block = makeBlock();
  const framing = job.mode === 'latency' ? recordFraming(block) : job.mode === 'events' ? eventFraming(block, job.bytes) : undefined;
  // the framing's code warms on small events: it is the same code at every size, and 50 rounds of
  // 40 MiB documents cost each process ~40 s of CPU (six at once: minutes before the first event)
  const warmEventBytes = job.mode === 'events' ? Math.min(job.bytes, WARM_EVENT_BYTES) : 0;
  await warmUp(block, job.mode === 'events' ? eventFraming(block, warmEventBytes) : framing, job.path);
  if (job.path === 's3') return s3Step(job, block, cpuStart);
  const source = job.inputs.length === 0;
  const onDemand = job.run === undefined && !isTransport(job.path);
  let run = job.run;
  let sl: Sluice | undefined;
  let startNs: number | null = null;

  if (onDemand && source) {
    // set-up on demand: the run (and so every channel) is created when the source starts
    await command('go');
    startNs = nowNs();
    const { body } = await control<{ run: string; token: string }>(job.dir!, 'POST', '/v1/runs', { workflow: job.workflow });
    run = { id: body.run, token: body.token };
    await send({ type: 'run', run });
  } else if (onDemand) {
    run = (await command('run')).run;
  }
  if (run) sl = await joinRun(job, run);

  // the relay path: outputs open before the consumers listen, so every producer goes to the daemon's relay
  const outputsFirst = job.path === 'relay';
  let inputs: Readable[] = [];
  let ends: Pick<Ends, 'outputs' | 'close'> = { outputs: [], close: async () => undefined };
  for (const phase of outputsFirst ? (['outputs', 'inputs'] as const) : (['inputs', 'outputs'] as const)) {
    await command(phase);
    if (phase === 'inputs') {
      inputs = await openInputs(job, sl);
      await send({ type: 'ready', endpoint: '' });
    } else {
      ends = await openOutputs(job, sl);
      await send({ type: 'opened' });
    }
  }
  // a source starts at 'go'; every other step reads at once, as a warm function waiting on its
  // input does (waiting for a 'go' of its own would put that IPC message on the first byte's path)
  if (!onDemand && source) await command('go');
  // what the step writes while the data flows (set-up on demand included): what the daemon's counter covers too
  if (!onDemand) diskStart = writeBytes('self');

  const result = { startNs, inputs: [] as InputStat[], delaysNs: [] as number[], warmEventBytes };
  if (job.mode === 'bytes') {
    if (source) {
      const started = await pumpAll(ends.outputs, block, job.split ? job.bytes / ends.outputs.length : job.bytes);
      result.startNs ??= started;
    } else {
      const forward = ends.outputs.length > 0 ? (chunk: Buffer) => writeAll(ends.outputs, chunk) : undefined;
      result.inputs = await Promise.all(inputs.map((i) => consume(i, block, forward)));
    }
  } else if (framing) {
    if (source) result.startNs = await paced(job, ends.outputs[0]!, framing);
    else result.delaysNs = await relayMessages(job, inputs[0]!, ends.outputs[0], framing);
  }
  await ends.close();
  await send({ type: 'result', ...result, diskBytes: writeBytes('self') - diskStart, cpu: cpuMsSince(cpuStart) });
}

/**
 * A warm function: before the clock starts, move WARM_BYTES through the same code in this
 * process (framing, checksum, streams, the verifier, the messages' framing) over the medium the
 * step's channels use (`warmMedium`), so the run does not time V8 compiling it — warming in
 * memory left the pipe and socket code cold. The object store's steps warm in memory, and warm
 * their client with a PUT and a GET (keeping those connections).
 */
const WARM_BYTES = 4 * 1024 * 1024;

async function warmUp(block: Buffer, framing: Framing | undefined, path: WfPath): Promise<void> {
  const medium = warmMedium(path);
  const endpoint = `${os.tmpdir()}/sluice-bench-warm-${process.pid}`;
  let reader: Readable;
  let out: Writable;
  let close: () => Promise<void>;
  let memoryListener: { close(): Promise<void> } | undefined;
  if (medium) {
    const served = await serve(medium, endpoint, undefined);
    const dialed = await dial(medium, endpoint, undefined);
    [reader, out, close] = [await served.stream, dialed.out, () => dialed.close()];
  } else {
    const memory = new MemoryTransport();
    const listener = await memory.listen('warm');
    memoryListener = listener;
    const [conn, accepted] = await Promise.all([memory.dial('warm'), listener.accept()]);
    const writer = new ChannelWriter(conn);
    [reader, out, close] = [new ChannelReader(accepted), writer, async () => void (writer.end(), await finished(writer))];
  }
  const sink = new PassThrough({ highWaterMark: 1024 * 1024 });
  sink.resume();
  const received = consume(reader, block, (chunk) => writeAll([sink], chunk));
  await pumpAll([out], block, WARM_BYTES);
  await Promise.all([close(), received]);
  if (framing) for (let i = 0; i < 50; i++) framing.read(framing.restamp(framing.make(i)));
  await memoryListener?.close();
  if (medium === 'raw-fifo') fs.rmSync(endpoint, { force: true });
}

/** The medium a step warms over: the one its channels use (a cross-node step's: the Unix sockets to its daemon; object-store steps: in memory). */
function warmMedium(path: WfPath): 'fifo' | 'unix' | 'raw-fifo' | undefined {
  return path === 'unix' || path === 'raw-fifo' ? path : path === 'ws' ? 'unix' : path === 's3' ? undefined : 'fifo';
}

// ---- the object store: upload the whole output, the next step downloads once it is complete ----

/** The AWS SDK, loaded only by the processes that use it (it costs a few hundred ms of CPU to load). */
const s3 = (): Promise<typeof import('./s3.js')> => import('./s3.js');

async function s3Step(job: StepJob, block: Buffer, cpuStart: NodeJS.CpuUsage): Promise<void> {
  const { downloadObject, s3Client, uploadObject } = await s3();
  const target = job.s3!;
  const client = s3Client(target);
  const warmKey = `bench/warm/${process.pid}`;
  await uploadObject(client, target.bucket, warmKey, block.subarray(0, 1024));
  await downloadObject(client, target.bucket, warmKey, () => undefined);
  await command('inputs');
  await send({ type: 'ready', endpoint: '' });
  await command('outputs');
  await send({ type: 'opened' });
  const source = job.inputs.length === 0;
  if (source) await command('go');
  const diskStart = writeBytes('self');
  // each output streams into its own multipart upload
  const bodies = job.outputs.map(() => new PassThrough({ highWaterMark: 8 * 1024 * 1024 }));
  const uploads = job.outputs.map((key, i) => uploadObject(client, target.bucket, key, bodies[i]!));
  uploads.forEach((u) => u.catch(() => undefined)); // awaited below
  let startNs: number | null = null;
  let inputs: InputStat[] = [];
  if (source) {
    startNs = await pumpAll(bodies, block, job.split ? job.bytes / bodies.length : job.bytes);
  } else {
    await command('download');
    inputs = await Promise.all(
      job.inputs.map(async (key) => {
        const verifier = new Verifier(block);
        let firstByteNs = 0;
        await downloadObject(client, target.bucket, key, async (chunk) => {
          if (firstByteNs === 0) firstByteNs = nowNs();
          verifier.check(chunk);
          if (bodies.length > 0) await writeAll(bodies, chunk);
        });
        return statOf(verifier, firstByteNs, nowNs());
      }),
    );
  }
  for (const b of bodies) b.end();
  await Promise.all(uploads);
  if (uploads.length > 0) await send({ type: 'uploaded' });
  client.destroy();
  await send({ type: 'result', startNs, inputs, delaysNs: [], warmEventBytes: 0, diskBytes: writeBytes('self') - diskStart, cpu: cpuMsSince(cpuStart) });
}

// ---- messages: 1 KiB records and CloudEvents, paced one at a time ----

/**
 * How messages travel in latency and events modes: 1 KiB records whose first 8 bytes are the
 * sender's hrtime; or CloudEvent JSON documents behind a 4-byte length, their `sluicesentns`
 * attribute the sender's hrtime (taken before serialising: a hop's delay includes JSON work).
 */
interface Framing {
  /** message number `seq`, stamped now */
  make(seq: number): Buffer;
  /** a message's whole size, from its first 4 bytes (at least) */
  sizeOf(head: Buffer): number;
  /** the message's send time, and whether its content is right */
  read(message: Buffer): { sentNs: number; ok: boolean };
  /** the same message, stamped now, to pass on */
  restamp(message: Buffer): Buffer;
}

function recordFraming(block: Buffer): Framing {
  return {
    make() {
      const r = Buffer.from(block.subarray(0, RECORD_BYTES));
      r.writeBigUInt64LE(process.hrtime.bigint(), 0);
      return r;
    },
    sizeOf: () => RECORD_BYTES,
    read: (m) => ({ sentNs: Number(m.readBigUInt64LE(0)), ok: m.compare(block, 8, RECORD_BYTES, 8, RECORD_BYTES) === 0 }),
    restamp(m) {
      const r = Buffer.from(m);
      r.writeBigUInt64LE(process.hrtime.bigint(), 0);
      return r;
    },
  };
}

interface CloudEvent {
  specversion: '1.0';
  id: string;
  source: string;
  type: string;
  datacontenttype: 'application/json';
  time: string;
  sluicesentns: string;
  data: { seq: number; payload: string };
}

/** Base64 text of the block stream, `chars` characters: an event's payload, known to every step. */
export function payloadOf(block: Buffer, chars: number): string {
  const raw = Buffer.allocUnsafe(Math.ceil((chars * 3) / 4) + 3);
  for (let at = 0; at < raw.length; at += block.length) block.copy(raw, at, 0, Math.min(block.length, raw.length - at));
  return raw.toString('base64').slice(0, chars);
}

/** The JSON around the payload, characters (an event's size is its whole document). */
const EVENT_OVERHEAD = 260;

function eventFraming(block: Buffer, eventBytes: number): Framing {
  const payload = payloadOf(block, Math.max(1, eventBytes - EVENT_OVERHEAD));
  const frame = (e: CloudEvent): Buffer => {
    const json = Buffer.from(JSON.stringify(e));
    const out = Buffer.allocUnsafe(4 + json.length);
    out.writeUInt32LE(json.length, 0);
    json.copy(out, 4);
    return out;
  };
  const parse = (m: Buffer): CloudEvent => JSON.parse(m.toString('utf8', 4)) as CloudEvent;
  return {
    make: (seq) =>
      frame({
        specversion: '1.0',
        id: `ev-${seq}`,
        source: '/sluice/bench/s0',
        type: 'io.sluice.bench.knix',
        datacontenttype: 'application/json',
        time: new Date().toISOString(),
        sluicesentns: String(process.hrtime.bigint()),
        data: { seq, payload },
      }),
    sizeOf: (head) => 4 + head.readUInt32LE(0),
    read(m) {
      const e = parse(m);
      return { sentNs: Number(e.sluicesentns), ok: e.data.payload === payload };
    },
    restamp(m) {
      const e = parse(m);
      e.source = `/sluice/bench/${e.source.length}`;
      e.sluicesentns = String(process.hrtime.bigint());
      return frame(e);
    },
  };
}

/** The sink's pong socket, which it serves once it has started (retried until then, at most 5 s). */
async function dialPong(at: string): Promise<net.Socket> {
  for (let attempt = 0; ; attempt++) {
    const socket = net.connect(at);
    try {
      await once(socket, 'connect');
      return socket;
    } catch (err) {
      if (attempt > 5000 || !['ENOENT', 'ECONNREFUSED'].includes(codeOf(err) ?? '')) throw err;
      await sleep(1);
    }
  }
}

/** The source: one message at a time, the next once the sink's pong came. Returns hrtime at the first. */
async function paced(job: StepJob, out: Writable, framing: Framing): Promise<number> {
  const pong = await dialPong(job.pongPath!);
  let credit = 0;
  let wake: (() => void) | undefined;
  pong.on('data', (chunk: Buffer) => {
    credit += chunk.length;
    wake?.();
    wake = undefined;
  });
  const startNs = nowNs();
  for (let i = 0; i < job.warmup! + job.count!; i++) {
    if (!out.write(framing.make(i))) await once(out, 'drain');
    if (credit === 0) await new Promise<void>((resolve) => (wake = resolve));
    credit--;
  }
  pong.end();
  return startNs;
}

/** A middle step or the sink: each complete message's delay recorded, then passed on (or ponged). */
async function relayMessages(job: StepJob, input: Readable, out: Writable | undefined, framing: Framing): Promise<number[]> {
  let pong: net.Socket | undefined;
  if (!out) {
    const server = net.createServer();
    await listenNet(server, job.pongPath!);
    pong = await firstConnection(server);
  }
  const delays: number[] = [];
  // chunks kept apart until a message is whole: joining each chunk to the rest would copy a 40 MiB event hundreds of times
  let parts: Buffer[] = [];
  let have = 0;
  let need = 0;
  let seen = 0;
  let ok = true;
  const PONG = Buffer.from([1]);
  input.on('data', (chunk: Buffer) => {
    const atNs = nowNs();
    parts.push(chunk);
    have += chunk.length;
    for (;;) {
      if (need === 0) {
        if (have < 4) break;
        need = framing.sizeOf(parts[0]!.length >= 4 ? parts[0]! : Buffer.concat(parts, have));
      }
      if (have < need) break;
      const all = parts.length === 1 ? parts[0]! : Buffer.concat(parts, have);
      const message = all.subarray(0, need);
      const rest = all.subarray(need);
      parts = rest.length > 0 ? [rest] : [];
      have = rest.length;
      need = 0;
      const { sentNs, ok: right } = framing.read(message);
      // an event's delay ends once it is parsed: read() parsed it
      const doneNs = job.mode === 'events' ? nowNs() : atNs;
      if (seen++ >= job.warmup!) delays.push(doneNs - sentNs);
      ok &&= right;
      if (out) out.write(framing.restamp(message));
      else pong!.write(PONG);
    }
  });
  await finished(input);
  pong?.end();
  if (!ok || have > 0 || seen !== job.warmup! + job.count!) throw new Error(`${job.label}: messages did not verify (${seen} of ${job.warmup! + job.count!}, ${have} bytes left over)`);
  return delays;
}

/** The object store's hop latency: PUT then GET, hop after hop, message after message, in this process. */
export async function runS3Hops(job: S3HopsJob): Promise<void> {
  const { deleteObject, downloadObject, s3Client, uploadObject } = await s3();
  const client = s3Client(job.s3);
  const block = makeBlock();
  const framing = job.mode === 'latency' ? recordFraming(block) : eventFraming(block, job.bytes);
  const delays: number[] = [];
  let verified = true;
  for (let i = 0; i < job.warmup + job.count; i++) {
    let message: Buffer = framing.make(i);
    for (let hop = 0; hop < job.hops; hop++) {
      const key = `${job.prefix}/m${i}-h${hop}`;
      await uploadObject(client, job.s3.bucket, key, message);
      const parts: Buffer[] = [];
      await downloadObject(client, job.s3.bucket, key, (c) => void parts.push(c));
      const got = Buffer.concat(parts);
      const { sentNs, ok } = framing.read(got);
      if (i >= job.warmup) delays.push(nowNs() - sentNs);
      verified &&= ok;
      await deleteObject(client, job.s3.bucket, key);
      message = framing.restamp(got);
    }
  }
  client.destroy();
  await send({ type: 's3-hops', delaysNs: delays, verified });
}
