/**
 * What the client library (client/) needs of the transports, and nothing else: errors, the
 * channel protocol, records, the run directory's layout and the two on-node media a function
 * dials (the run's FIFOs and the daemon's Unix sockets). Functions load this, not ./index.js,
 * which also re-exports the WebSocket transport (and with it `ws`), the mux, shm, the stores
 * and the memory budget: daemon-side code a function never runs. The lean client package
 * (packages/client) is built from client/ and what this file imports;
 * test/unit/client-lean-import.test.ts checks that importing the client loads none of the rest.
 */
export { ErrorCodes, ConnectError, RequestError, SluiceError, codeOf, hasCode, isErrorCode, type ErrorCode } from './errors.js';
export { ChannelReader, ChannelWriter } from './channel.js';
export { decodeRecords, encodeRecord } from './records.js';
export { DAEMON_SOCKET, MANIFEST_FILE, RELAY_SOCKET, checkName, defaultRuntimeDir, runDirectory, type InstanceRef, type RunManifest } from './layout.js';
export { fifoTransport } from './fifo.js';
export { unixTransport } from './unix.js';
export type { Listener } from './transport.js';
