// A tenantkeys producer in JavaScript, written from the wire contract alone (docs/contract/):
// Celery protocol v2 messages (JSON, and msgpack for the compact sign_batch) over Redis or
// RabbitMQ, results read from Redis, each signature verified with jose against the tenant's JWKS.
//
//   node producer.mjs redis|amqp BROKER_URL RESULT_URL TENANT JWKS_FILE FILE [FILE ...]
//
// Sends each file as a tenantkeys.sign job, then all of them as one tenantkeys.sign_batch job
// (its items form, JSON) and as one compact tenantkeys.sign_batch (raw bytes in msgpack), and
// prints one JSON line per job: {task, job_id, verified, ...the stored result}, where
// verified lists, for each signature of the job, whether jose accepted it for those bytes
// (and refused it for the same bytes with one more).
import { createHash, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { encode } from '@msgpack/msgpack';
import amqp from 'amqplib';
import * as jose from 'jose';
import { createClient } from 'redis';

const SIGN_QUEUE = 'tenantkeys.sign';
const EXCHANGE = 'tenantkeys';
const FINAL_STATES = new Set(['SUCCESS', 'FAILURE', 'REVOKED']);
// Content type and encoding of a JSON body, and of a msgpack one (the compact sign_batch).
const JSON_BODY = { contentType: 'application/json', contentEncoding: 'utf-8' };
const MSGPACK_BODY = { contentType: 'application/x-msgpack', contentEncoding: 'binary' };

// The keyword arguments of tenantkeys.sign: the payload as padded standard base64.
function signJob(tenantId, data) {
  return { tenant_id: tenantId, payload: data.toString('base64') };
}

// The keyword arguments of a compact tenantkeys.sign_batch: one tenant, the payloads as raw
// bytes (Buffers, which msgpack encodes as bin). Its result: jws[i] for payloads[i].
function compactBatchJob(tenantId, payloads) {
  return { tenant_id: tenantId, payloads };
}

// What monitoring tools show instead of the arguments: hashes and sizes, never payloads.
function shown(kwargs) {
  if (kwargs.items) return JSON.stringify({ item_count: kwargs.items.length });
  if (kwargs.payloads) {
    const bytes = kwargs.payloads.reduce((total, data) => total + data.length, 0);
    return JSON.stringify({ payload_bytes: bytes, payload_count: kwargs.payloads.length, tenant_id: kwargs.tenant_id });
  }
  const data = Buffer.from(kwargs.payload, 'base64');
  const digest = createHash('sha256').update(data).digest('hex');
  return JSON.stringify({ payload_sha256: digest, payload_size: data.length, tenant_id: kwargs.tenant_id });
}

// One job as Celery's protocol v2: headers, properties and the body [args, kwargs, embed], as
// JSON or (binary) as msgpack.
function taskMessage(task, kwargs, { binary = false, jobId = randomUUID() } = {}) {
  const headers = {
    lang: 'js',
    task,
    id: jobId,
    shadow: null,
    eta: null,
    expires: null,
    group: null,
    group_index: null,
    retries: 0,
    timelimit: [null, null],
    root_id: jobId,
    parent_id: null,
    argsrepr: '()',
    kwargsrepr: shown(kwargs),
    origin: `${process.pid}@${hostname()}`,
    ignore_result: false,
    replaced_task_nesting: 0,
    stamped_headers: null,
    stamps: {},
    enqueued_at: Date.now() / 1000, // optional: the worker measures latency from it
  };
  const embed = { callbacks: null, errbacks: null, chain: null, chord: null };
  const body = binary
    ? Buffer.from(encode([[], kwargs, embed]))
    : Buffer.from(JSON.stringify([[], kwargs, embed]), 'utf8');
  return { jobId, task, queue: SIGN_QUEUE, headers, body, ...(binary ? MSGPACK_BODY : JSON_BODY) };
}

// kombu's Redis envelope: one JSON document per list item, the body base64 inside it (JSON or
// msgpack alike), a unique delivery_tag (the worker records an unacked message under it),
// properties last.
function redisEnvelope(message) {
  return JSON.stringify({
    body: message.body.toString('base64'),
    'content-encoding': message.contentEncoding,
    'content-type': message.contentType,
    headers: message.headers,
    properties: {
      correlation_id: message.jobId,
      reply_to: '',
      delivery_mode: 2,
      priority: 0,
      delivery_info: { exchange: '', routing_key: message.queue },
      body_encoding: 'base64',
      delivery_tag: randomUUID(),
    },
  });
}

async function publishRedis(url, messages) {
  const client = await createClient({ url }).connect();
  try {
    for (const message of messages) await client.lPush(message.queue, redisEnvelope(message));
  } finally {
    client.destroy();
  }
}

// Publisher confirms, and mandatory: a job no queue is bound for comes back and fails here.
async function publishAmqp(url, messages) {
  const connection = await amqp.connect(url);
  try {
    const channel = await connection.createConfirmChannel();
    const returned = [];
    channel.on('return', (message) => returned.push(message.properties.correlationId));
    for (const message of messages) {
      channel.publish(EXCHANGE, message.queue, message.body, {
        contentType: message.contentType,
        contentEncoding: message.contentEncoding,
        headers: message.headers,
        correlationId: message.jobId,
        deliveryMode: 2,
        priority: 0,
        mandatory: true,
      });
    }
    await channel.waitForConfirms();
    if (returned.length) throw new Error(`no queue took the jobs ${returned.join(', ')}`);
    await channel.close();
  } finally {
    await connection.close();
  }
}

// jose accepts the signature for `data`, and refuses it for `data` with one byte more and
// with its last byte changed.
async function verified(jwks, compact, data, tenant) {
  const longer = Buffer.concat([data, Buffer.from(' ')]);
  const flipped = Buffer.from(data);
  flipped[flipped.length - 1] ^= 1;
  if (!(await verifies(jwks, compact, data, tenant))) return false;
  return !(await verifies(jwks, compact, longer, tenant)) && !(await verifies(jwks, compact, flipped, tenant));
}

// Poll celery-task-meta-<job id> until the job's state is final; the stored document.
async function waitResult(results, jobId, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const stored = await results.get(`celery-task-meta-${jobId}`);
    const document = stored === null ? null : JSON.parse(stored);
    if (document && FINAL_STATES.has(document.status)) return document;
    if (Date.now() > deadline) throw new Error(`no result for job ${jobId} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// A detached JWS over `data`, checked by jose against the tenant's JWKS (RFC 7515 appendix F).
async function verifies(jwks, compact, data, tenant) {
  const [protectedHeader, detached, signature] = compact.split('.');
  const header = jose.decodeProtectedHeader(compact);
  if (detached !== '' || (jwks.revoked ?? []).some((entry) => entry.kid === header.kid)) return false;
  try {
    const { protectedHeader: found } = await jose.flattenedVerify(
      { protected: protectedHeader, payload: jose.base64url.encode(data), signature },
      jose.createLocalJWKSet({ keys: jwks.keys }),
      { algorithms: ['Ed25519', 'EdDSA', 'ES256'] },
    );
    return found.tenant_id === tenant;
  } catch {
    return false;
  }
}

async function main() {
  const [transport, brokerUrl, resultUrl, tenant, jwksFile, ...files] = process.argv.slice(2);
  if (!['redis', 'amqp'].includes(transport) || files.length === 0) {
    throw new Error('usage: node producer.mjs redis|amqp BROKER_URL RESULT_URL TENANT JWKS_FILE FILE...');
  }
  const jwks = JSON.parse(readFileSync(jwksFile, 'utf8'));
  const payloads = files.map((name) => readFileSync(name));
  const jobs = payloads.map((data) => taskMessage('tenantkeys.sign', signJob(tenant, data)));
  jobs.push(taskMessage('tenantkeys.sign_batch', { items: payloads.map((data) => signJob(tenant, data)) }));
  jobs.push(taskMessage('tenantkeys.sign_batch', compactBatchJob(tenant, payloads), { binary: true }));
  await (transport === 'redis' ? publishRedis : publishAmqp)(brokerUrl, jobs);
  const results = await createClient({ url: resultUrl }).connect();
  try {
    for (const [index, job] of jobs.entries()) {
      const found = await waitResult(results, job.jobId);
      const signatures = [];
      if (found.status === 'SUCCESS' && job.task === 'tenantkeys.sign') {
        signatures.push([found.result.result.jws, payloads[index]]);
      } else if (found.status === 'SUCCESS' && found.result.result.jws) {
        // The compact form: jws[i] signs payloads[i]; null where errors holds index i.
        found.result.result.jws.forEach((jws, i) => {
          if (jws !== null) signatures.push([jws, payloads[i]]);
        });
      } else if (found.status === 'SUCCESS') {
        found.result.result.results.forEach((item, i) => {
          if (item.ok) signatures.push([item.result.jws, payloads[i]]);
        });
      }
      const checks = await Promise.all(signatures.map(([jws, data]) => verified(jwks, jws, data, tenant)));
      console.log(JSON.stringify({ task: job.task, job_id: job.jobId, verified: checks, ...found }));
    }
  } finally {
    results.destroy();
  }
}

await main();
