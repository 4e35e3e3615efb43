/**
 * The object-store baseline as users run it today, at its best: a step uploads its whole output as
 * one object (multipart, parts in parallel), and the next step downloads it once the upload is
 * complete, with parallel ranged GETs written out in order. Against s3rver in its own process by
 * default, or any S3 (`--s3-endpoint`, credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, HeadBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { MiB } from './data.js';
import { peakRssMb, resetPeakRss, writeBytes } from './proc.js';

/** Where the objects go; credentials, when absent, from the SDK's provider chain (environment first). */
export interface S3Target {
  endpoint: string;
  bucket: string;
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

/** Multipart: parts of this size, this many in flight (what lib-storage users pick). */
export const PART_BYTES = 8 * MiB;
export const PARTS_IN_FLIGHT = 4;
/** Ranged GETs: ranges of this size, this many in flight, written out in order. */
export const RANGE_BYTES = 8 * MiB;
export const RANGES_IN_FLIGHT = 4;

// on Node 20 the AWS SDK warns that its 2027 releases need Node 22: not news for a benchmark's output
if (Number(process.versions.node.split('.')[0]) < 22) process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';

export function s3Client(target: S3Target): S3Client {
  return new S3Client({
    endpoint: target.endpoint,
    region: process.env.AWS_REGION ?? 'us-east-1',
    forcePathStyle: true,
    ...(target.credentials && { credentials: target.credentials }),
    // S3-compatible servers other than AWS store the SDK's default streamed CRCs wrongly or refuse them
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    maxAttempts: 3,
  });
}

/** Upload `body` as one object: one PUT up to PART_BYTES, else multipart with PARTS_IN_FLIGHT parts at once. */
export async function uploadObject(client: S3Client, bucket: string, key: string, body: Readable | Buffer): Promise<void> {
  if (Buffer.isBuffer(body) && body.length <= PART_BYTES) {
    await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length }));
    return;
  }
  try {
    await new Upload({ client, params: { Bucket: bucket, Key: key, Body: body }, partSize: PART_BYTES, queueSize: PARTS_IN_FLIGHT, leavePartsOnError: false }).done();
  } catch (err) {
    // some S3-compatible servers answer CompleteMultipartUpload without an ETag; the object is complete
    if (!/ETag/i.test((err as Error).message)) throw err;
  }
}

async function getRange(client: S3Client, bucket: string, key: string, from: number, to: number): Promise<{ bytes: Buffer; total: number }> {
  const answer = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: `bytes=${from}-${to}` }));
  const array = await answer.Body!.transformToByteArray();
  const total = Number(/\/(\d+)$/.exec(answer.ContentRange ?? '')?.[1] ?? answer.ContentLength ?? array.byteLength);
  return { bytes: Buffer.from(array.buffer, array.byteOffset, array.byteLength), total };
}

/**
 * Download `key` with ranged GETs, RANGES_IN_FLIGHT at once, handing each range to `sink` in order
 * (awaited: back-pressure). The first range tells the object's size. Returns the bytes downloaded.
 */
export async function downloadObject(client: S3Client, bucket: string, key: string, sink: (chunk: Buffer) => void | Promise<void>): Promise<number> {
  const first = await getRange(client, bucket, key, 0, RANGE_BYTES - 1);
  await sink(first.bytes);
  const total = first.total;
  const ranges: Array<[number, number]> = [];
  for (let from = RANGE_BYTES; from < total; from += RANGE_BYTES) ranges.push([from, Math.min(total, from + RANGE_BYTES) - 1]);
  const inFlight: Array<Promise<{ bytes: Buffer }>> = [];
  let next = 0;
  const launch = (): void => {
    const r = ranges[next++];
    if (!r) return;
    const p = getRange(client, bucket, key, r[0], r[1]);
    p.catch(() => undefined); // awaited in order below
    inFlight.push(p);
  };
  for (let i = 0; i < RANGES_IN_FLIGHT; i++) launch();
  while (inFlight.length > 0) {
    const { bytes } = await inFlight.shift()!;
    launch();
    await sink(bytes);
  }
  return total;
}

export async function deleteObject(client: S3Client, bucket: string, key: string): Promise<void> {
  await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
}

/** Make sure `bucket` exists (creating it when it does not). */
export async function ensureBucket(target: S3Target): Promise<void> {
  const client = s3Client(target);
  try {
    await client.send(new HeadBucketCommand({ Bucket: target.bucket }));
  } catch {
    await client.send(new CreateBucketCommand({ Bucket: target.bucket }));
  } finally {
    client.destroy();
  }
}

const S3SERVER = fileURLToPath(new URL('./s3server.js', import.meta.url));
/** s3rver accepts only these */
export const S3RVER_KEYS = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' } as const;

/** s3rver in a child process, its disk writes and memory measured from /proc. */
export class S3Server {
  private constructor(
    readonly target: S3Target,
    private readonly child: ChildProcess,
    readonly directory: string,
  ) {}

  static async start(baseDir: string, bucket: string): Promise<S3Server> {
    const directory = path.join(baseDir, 's3rver');
    fs.mkdirSync(directory, { recursive: true });
    const child = fork(S3SERVER, [directory, bucket], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    running.add(child);
    child.on('exit', () => running.delete(child));
    const [message] = (await Promise.race([once(child, 'message'), once(child, 'exit').then(([code]) => Promise.reject(new Error(`s3rver exited with ${String(code)}`)))])) as [{ endpoint: string }];
    return new S3Server({ endpoint: message.endpoint, bucket, credentials: S3RVER_KEYS }, child, directory);
  }

  get pid(): number {
    return this.child.pid!;
  }

  writeBytes(): number {
    return writeBytes(this.pid);
  }

  peakRssMb(): number {
    return peakRssMb(this.pid);
  }

  resetPeakRss(): void {
    resetPeakRss(this.pid);
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = once(this.child, 'exit');
      this.child.kill('SIGTERM');
      await exited;
    }
    fs.rmSync(this.directory, { recursive: true, force: true });
  }
}

const running = new Set<ChildProcess>();
/** SIGKILL the S3 servers still running: for the orchestrator's exit. */
export function killS3Servers(): void {
  for (const child of running) child.kill('SIGKILL');
}
