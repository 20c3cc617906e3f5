// The independent RFC 8785 implementation: npm canonicalize over JSON.parse, one document per
// input line (JSON-encoded strings, so any whitespace survives); prints one result per line.
import { readFileSync } from 'node:fs';
import canonicalize from 'canonicalize';

const out = [];
for (const line of readFileSync(0, 'utf8').split('\n')) {
  if (line) out.push(JSON.stringify(canonicalize(JSON.parse(JSON.parse(line)))));
}
process.stdout.write(out.join('\n'));
