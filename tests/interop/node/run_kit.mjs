// Runs a verification snippet from docs/verifying.md over the cases tests/interop sends.
// Usage: node run_kit.mjs SNIPPET.mjs < cases.json ; prints {"name": "valid" | "invalid: ..."}.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const { verify } = await import(pathToFileURL(process.argv[2]).href);
const { jwks, cases } = JSON.parse(readFileSync(0, 'utf8'));
const verdicts = {};
for (const c of cases) {
  const payload = new Uint8Array(Buffer.from(c.payload_b64, 'base64'));
  try {
    const covered = await verify(jwks[c.tenant], c.jws, payload, c.tenant);
    verdicts[c.name] = `valid ${Buffer.from(covered).toString('base64')}`;
  } catch (err) {
    verdicts[c.name] = `invalid: ${err.code ?? err.name}: ${err.message}`;
  }
}
process.stdout.write(JSON.stringify(verdicts));
