/** Sluice's wire and media. Imports nothing from server/ or client/. */
export * from './errors.js';
export * from './codec.js';
export * from './checksum.js';
export * from './transport.js';
export * from './channel.js';
export * from './records.js';
export { UnixTransport, unixTransport, MAX_UNIX_PATH_BYTES, fitsUnixPath, removeStaleSocket } from './unix.js';
export * from './layout.js';
export { FifoTransport, fifoTransport, ACK_SUFFIX } from './fifo.js';
export { MemoryTransport } from './memory.js';
export { ShmTransport, shmTransport, RING_SUFFIX, SHM_DEFAULT_RING_BYTES, SHM_DEFAULT_SLOT_BYTES, SHM_MIN_RING_BYTES, SHM_MAX_RING_BYTES, type ShmTransportOptions } from './shm.js';
export { WsTransport, WS_DEFAULT_MAX_PAYLOAD, WS_DEFAULT_HANDSHAKE_TIMEOUT_MS, WS_CLOSE_UNAUTHORIZED, type WsTransportOptions, type WsDialOptions } from './ws.js';
export { Mux, MuxTransport, isLinkFailure, type MuxOptions } from './mux.js';
export { firstChunk, mediumError } from './streams.js';
export { acceptEach, pause } from './waiting.js';
export * from './store.js';
export { DirectoryStore } from './store-file.js';
// store-s3.js is not re-exported: functions import this index, and the AWS SDK costs them start-up time
export { MemoryBudget, type Grant } from './budget.js';
