/**
 * X.509 certificates for tests, made in pure Node (no `openssl` CLI, no package): Node can parse
 * and verify certificates but not issue them, so this writes the DER itself — just the fields a
 * TLS server certificate and its CA need — and signs it with `crypto.sign`. Keys are ECDSA P-256,
 * signatures ecdsa-with-SHA256.
 *
 * Why not `openssl req`: CI runs on a fresh machine with only `npm ci`, and Debian ships the
 * `openssl` command as an optional package, so it may be missing; Node's crypto is always there.
 *
 * Every certificate made is parsed back with `X509Certificate` and checked against its issuer
 * before it is returned, so a mistake here fails loudly, not as a puzzling TLS error.
 */
import { X509Certificate, createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';
import { isIPv4 } from 'node:net';

export interface Issued {
  /** the certificate, PEM */
  cert: string;
  /** its private key, PEM (PKCS#8, unencrypted) */
  key: string;
  /** for signing other certificates */
  keyObject: KeyObject;
  /** SHA-1 of its public key: its subjectKeyIdentifier, and the authorityKeyIdentifier of what it signs */
  keyId: Buffer;
  /** its subject's common name */
  name: string;
}

export interface IssueOptions {
  /** the subject's common name */
  name: string;
  /** the signing CA; absent: self-signed */
  issuer?: Issued;
  /** a CA (basicConstraints cA, keyCertSign) rather than a TLS server certificate; default false */
  ca?: boolean;
  /** subjectAltName entries: IPv4 addresses and DNS names; default none */
  altNames?: string[];
  /** valid from now minus this many days (negative: in the future); default 1 */
  notBeforeDaysAgo?: number;
  /** valid until now plus this many days (negative: expired); default 30 */
  notAfterDays?: number;
}

/** A CA, or a server certificate signed by `issuer` (self-signed without one). */
export function issue(options: IssueOptions): Issued {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const keyId = createHash('sha1').update(spki).digest();
  const ca = options.ca ?? false;
  const signer = options.issuer ?? { keyObject: privateKey, keyId, name: options.name };
  const day = 24 * 60 * 60 * 1000;

  const extensions = [
    extension(OID.basicConstraints, true, seq(ca ? [der(0x01, Buffer.from([0xff]))] : [])),
    // keyCertSign + cRLSign + digitalSignature for a CA, digitalSignature for a server
    extension(OID.keyUsage, true, ca ? der(0x03, Buffer.from([0x01, 0x86])) : der(0x03, Buffer.from([0x07, 0x80]))),
    extension(OID.subjectKeyIdentifier, false, der(0x04, keyId)),
    extension(OID.authorityKeyIdentifier, false, seq([der(0x80, signer.keyId)])),
  ];
  if (!ca) extensions.push(extension(OID.extKeyUsage, false, seq([oid(OID.serverAuth)])));
  const altNames = options.altNames ?? [];
  if (altNames.length > 0) {
    extensions.push(
      extension(
        OID.subjectAltName,
        false,
        seq(altNames.map((n) => (isIPv4(n) ? der(0x87, Buffer.from(n.split('.').map(Number))) : der(0x82, Buffer.from(n, 'ascii'))))),
      ),
    );
  }
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01; // positive, no leading zero byte
  const ecdsaWithSha256 = seq([oid(OID.ecdsaWithSha256)]);
  const tbs = seq([
    der(0xa0, der(0x02, Buffer.from([0x02]))), // version 3
    der(0x02, serial),
    ecdsaWithSha256,
    name(signer.name),
    seq([utcTime(Date.now() - (options.notBeforeDaysAgo ?? 1) * day), utcTime(Date.now() + (options.notAfterDays ?? 30) * day)]),
    name(options.name),
    spki,
    der(0xa3, seq(extensions)),
  ]);
  const signature = sign('sha256', tbs, signer.keyObject);
  const certDer = seq([tbs, ecdsaWithSha256, der(0x03, Buffer.concat([Buffer.from([0]), signature]))]);
  const cert = `-----BEGIN CERTIFICATE-----\n${certDer.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`;

  const parsed = new X509Certificate(cert);
  const issuerCert = options.issuer ? new X509Certificate(options.issuer.cert) : parsed;
  // (checkIssued wants keyCertSign on the issuer, which a self-signed server certificate lacks)
  if (!parsed.verify(issuerCert.publicKey) || (options.issuer && !parsed.checkIssued(issuerCert))) throw new Error(`test certificate for ${options.name} does not verify against its issuer`);
  for (const n of altNames) {
    if ((isIPv4(n) ? parsed.checkIP(n) : parsed.checkHost(n)) === undefined) throw new Error(`test certificate for ${options.name} does not name ${n}`);
  }
  return { cert, key: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, keyObject: privateKey, keyId, name: options.name };
}

const OID = {
  commonName: '2.5.4.3',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  ecdsaWithSha256: '1.2.840.10045.4.3.2',
} as const;

/** One DER TLV: tag, definite length, content. */
function der(tag: number, content: Buffer): Buffer {
  const n = content.length;
  let length: Buffer;
  if (n < 0x80) length = Buffer.from([n]);
  else {
    const bytes: number[] = [];
    for (let rest = n; rest > 0; rest >>= 8) bytes.unshift(rest & 0xff);
    length = Buffer.from([0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([Buffer.from([tag]), length, content]);
}

function seq(items: Buffer[]): Buffer {
  return der(0x30, Buffer.concat(items));
}

function oid(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  const bytes = [40 * arcs[0]! + arcs[1]!];
  for (const arc of arcs.slice(2)) {
    // base 128, most significant group first, the high bit set on all but the last
    const groups = [arc % 128];
    for (let rest = Math.floor(arc / 128); rest > 0; rest = Math.floor(rest / 128)) groups.unshift((rest % 128) | 0x80);
    bytes.push(...groups);
  }
  return der(0x06, Buffer.from(bytes));
}

/** A Name with one common name (UTF8String). */
function name(commonName: string): Buffer {
  return seq([der(0x31, seq([oid(OID.commonName), der(0x0c, Buffer.from(commonName, 'utf8'))]))]);
}

function utcTime(ms: number): Buffer {
  const iso = new Date(ms).toISOString(); // 2025-01-02T03:04:05.678Z
  const text = `${iso.slice(2, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  return der(0x17, Buffer.from(text, 'ascii'));
}

function extension(id: string, critical: boolean, value: Buffer): Buffer {
  return seq([oid(id), ...(critical ? [der(0x01, Buffer.from([0xff]))] : []), der(0x04, value)]);
}
