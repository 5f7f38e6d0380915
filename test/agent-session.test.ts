// The one-line errors a session reports: a failed run must never be told by an empty line, or the
// queue would count it as a success (and never retry it).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { resultError } from '../src/agent-session.js';

type Result = Parameters<typeof resultError>[0];
const result = (r: Record<string, unknown>) => ({ type: 'result', ...r }) as unknown as Result;

test('regression: an error result whose text starts with a newline is told by its first non-empty line', () => {
  assert.equal(
    resultError(result({ subtype: 'success', is_error: true, result: '\nOverloaded\nmore' })),
    'Overloaded',
  );
  assert.equal(
    resultError(result({ subtype: 'success', is_error: true, result: '\n \n' })),
    'an error without a message',
  );
  assert.equal(
    resultError(result({ subtype: 'success', is_error: true, result: '' })),
    'the model returned an error',
  );
  assert.equal(resultError(result({ subtype: 'error_max_turns', errors: [] })), 'error_max_turns');
  assert.equal(resultError(result({ subtype: 'error_during_execution', errors: ['a', 'b'] })), 'a; b');
});
