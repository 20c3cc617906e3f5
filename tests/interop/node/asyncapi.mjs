// Validate an AsyncAPI document with the official parser (@asyncapi/parser, AsyncAPI 3.0).
// Usage: node asyncapi.mjs <document.yaml>; relative $refs resolve from the document's folder.
// Prints one JSON line: {"version", "errors": [...], "warnings": [...]}, each diagnostic
// {"code", "message", "path"}. Exit status 0 either way: the caller decides what fails.
import { Parser, fromFile } from '@asyncapi/parser';

const severities = { 0: 'errors', 1: 'warnings' };
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, process.argv[2]).parse();
const found = { version: document ? document.version() : null, errors: [], warnings: [] };
for (const d of diagnostics) {
  const kind = severities[d.severity];
  if (kind) found[kind].push({ code: String(d.code), message: d.message, path: d.path.join('/') });
}
console.log(JSON.stringify(found));
