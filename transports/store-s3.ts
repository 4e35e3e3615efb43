/**
 * The S3 store: any S3-compatible service (AWS, Ceph RGW, MinIO, s3rver) through
 * `@aws-sdk/client-s3`. Credentials come from the SDK's standard provider chain (environment,
 * shared files, IAM role), never from the store URL. Requests are retried by the SDK (standard
 * mode, exponential back-off with jitter, `maxAttempts` tries); what still fails is
 * SLUICE_STORE_UNAVAILABLE. Objects larger than `partBytes` go up as multipart uploads with parts
 * in parallel (`@aws-sdk/lib-storage`).
 *
 * The region is `where.region` (the daemon's config always sets it: server/config.ts resolves
 * ?region=, AWS_REGION, AWS_DEFAULT_REGION); us-east-1 when a caller gives none.
 *
 * Against stores other than AWS, request and response checksums are computed only where S3
 * requires them: the SDK's newer default (a CRC on every streamed upload) is stored corrupted by
 * some S3-compatible servers and refused by others.
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type ListObjectsV2CommandOutput,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { ErrorCodes, RequestError } from './errors.js';
import { DirectoryStore } from './store-file.js';
import { checkKey, storeError, type ObjectStore, type StoredObject, type StoreLocation } from './store.js';

export interface S3StoreOptions {
  /** Tries per request, the first included. Default 4. */
  maxAttempts?: number;
  /** Objects above this size are uploaded in parts of this size, bytes (at least 5 MiB). Default 16 MiB. */
  partBytes?: number;
  /** Parts uploaded at once. Default 4. */
  partsInFlight?: number;
  /** Time to establish a connection, ms. Default 5000. */
  connectTimeoutMs?: number;
  /** Time without response on a request, ms. Default 60000. */
  requestTimeoutMs?: number;
  /** Default: the SDK's provider chain (environment, shared files, IAM role). */
  credentials?: { accessKeyId: string; secretAccessKey: string };
}

type S3Location = Extract<StoreLocation, { kind: 's3' }>;

const DELETES_IN_FLIGHT = 16;

function isMissing(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === 'NoSuchKey' || e.name === 'NotFound' || e.$metadata?.httpStatusCode === 404;
}

export class S3Store implements ObjectStore {
  readonly path = 's3' as const;
  readonly location: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly partBytes: number;
  private readonly partsInFlight: number;

  constructor(where: S3Location, options: S3StoreOptions = {}) {
    this.bucket = where.bucket;
    this.prefix = where.prefix;
    this.location = `s3://${where.bucket}/${where.prefix}${where.endpoint ? ` at ${where.endpoint}` : ''}`;
    this.partBytes = Math.max(5 * 1024 * 1024, options.partBytes ?? 16 * 1024 * 1024);
    this.partsInFlight = options.partsInFlight ?? 4;
    this.client = new S3Client({
      ...(where.endpoint ? { endpoint: where.endpoint } : {}),
      region: where.region ?? 'us-east-1',
      forcePathStyle: where.forcePathStyle,
      maxAttempts: options.maxAttempts ?? 4,
      ...(options.credentials ? { credentials: options.credentials } : {}),
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: { connectionTimeout: options.connectTimeoutMs ?? 5_000, requestTimeout: options.requestTimeoutMs ?? 60_000 },
    });
  }

  async check(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.bucket }));
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      const why =
        status === 403 || status === 401
          ? 'the credentials were refused; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the profile / role) and the bucket policy'
          : status === 404
            ? 'the bucket does not exist; create it or name another one'
            : `it did not answer (${(err as Error).name}: ${(err as Error).message}); check the endpoint and the network`;
      throw new RequestError(ErrorCodes.CONFIG, `--store ${this.location}: ${why}`, { cause: err });
    }
  }

  async put(key: string, body: Buffer): Promise<void> {
    const Key = this.prefix + checkKey(key);
    try {
      if (body.length <= this.partBytes) {
        await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: body, ContentLength: body.length }));
      } else {
        await new Upload({ client: this.client, params: { Bucket: this.bucket, Key, Body: body }, partSize: this.partBytes, queueSize: this.partsInFlight, leavePartsOnError: false }).done();
      }
    } catch (err) {
      throw storeError(`put ${key}`, err, { key });
    }
  }

  async get(key: string): Promise<Buffer | undefined> {
    const Key = this.prefix + checkKey(key);
    try {
      const answer = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key }));
      const bytes = await answer.Body!.transformToByteArray();
      return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    } catch (err) {
      if (isMissing(err)) return undefined;
      throw storeError(`get ${key}`, err, { key });
    }
  }

  async list(prefix: string): Promise<StoredObject[]> {
    checkKey(prefix, 'prefix');
    const found: StoredObject[] = [];
    let token: string | undefined;
    try {
      do {
        const page: ListObjectsV2CommandOutput = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, ContinuationToken: token }));
        for (const o of page.Contents ?? []) {
          if (o.Key) found.push({ key: o.Key.slice(this.prefix.length), modified: o.LastModified?.getTime() ?? 0 });
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw storeError(`list ${prefix}`, err, { prefix });
    }
    return found;
  }

  async folders(prefix: string): Promise<string[]> {
    if (prefix !== '' && !prefix.endsWith('/')) throw new RequestError(ErrorCodes.INVALID, `folders needs "" or a prefix ending in "/", got ${JSON.stringify(prefix)}`);
    checkKey(prefix, 'prefix');
    const found: string[] = [];
    let token: string | undefined;
    try {
      do {
        const page: ListObjectsV2CommandOutput = await this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.prefix + prefix, Delimiter: '/', ContinuationToken: token }));
        for (const p of page.CommonPrefixes ?? []) if (p.Prefix) found.push(p.Prefix.slice(this.prefix.length));
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    } catch (err) {
      throw storeError(`list folders of ${prefix}`, err, { prefix });
    }
    return found.sort();
  }

  async deletePrefix(prefix: string): Promise<number> {
    if (!prefix.endsWith('/')) throw new RequestError(ErrorCodes.INVALID, `deletePrefix needs a prefix ending in "/", got ${JSON.stringify(prefix)}`);
    const keys = (await this.list(prefix)).map((o) => o.key);
    // one request per object: DeleteObjects needs a Content-MD5 some S3-compatible servers reject
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < keys.length) {
        const key = keys[next++]!;
        try {
          await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }));
        } catch (err) {
          if (!isMissing(err)) throw storeError(`delete ${key}`, err, { key });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(DELETES_IN_FLIGHT, keys.length) }, worker));
    return keys.length;
  }

  close(): void {
    this.client.destroy();
  }
}

/** The store `--store` names. */
export function openStore(where: StoreLocation, options: S3StoreOptions = {}): ObjectStore {
  return where.kind === 'file' ? new DirectoryStore(where.path) : new S3Store(where, options);
}
