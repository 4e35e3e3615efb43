/**
 * s3rver (a real S3 protocol server: SigV4, multipart, ranges) in its own process, so that its
 * CPU, memory and disk writes are counted apart from the benchmark's: `node s3server.js DIR BUCKET`
 * answers `{ type: 'ready', endpoint }` over IPC and serves until it is killed.
 */
import S3rver from 's3rver';

const [directory, bucket] = process.argv.slice(2);
if (!directory || !bucket) throw new Error('usage: s3server.js DIRECTORY BUCKET');
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, resetOnClose: false, configureBuckets: [{ name: bucket }] });
const { port } = await server.run();
process.send!({ type: 'ready', endpoint: `http://127.0.0.1:${port}` });
// s3rver lets some stream errors escape (a file removed while a GET was starting on it): report, keep serving
process.on('uncaughtException', (err) => process.stderr.write(`s3rver: ${err.message}\n`));
// the orchestrator gone: nobody will stop us
process.on('disconnect', () => process.exit(0));
