// One Realtime session through agw with the OpenAI Node SDK's OpenAIRealtimeWS
// (always wss://), run by tests/test_node_sdk.py:
//   node realtime_session.mjs <baseURL> <model> <responses>
// The SDK trusts the test CA through NODE_EXTRA_CA_CERTS; the client key is
// AGW_CLIENT_KEY. Prints one JSON line: each response.done's usage, the close
// code, and the TLS version and certificate serial the gateway presented.
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';

const [baseURL, model, wanted] = process.argv.slice(2);
const client = new OpenAI({ apiKey: process.env.AGW_CLIENT_KEY, baseURL });
const rt = new OpenAIRealtimeWS({ model }, client);
const usages = [];
let tls = {};

function fail(message) {
  console.error(message);
  process.exit(1);
}

function ask(n) {
  rt.send({
    type: 'conversation.item.create',
    item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: `Say hello ${n}` }] },
  });
  rt.send({ type: 'response.create', response: { output_modalities: ['text'] } });
}

rt.on('error', (err) => fail(`realtime error: ${err.message}`));
rt.socket.on('open', () => {
  const socket = rt.socket._socket; // ws's TLS socket: what the gateway presented
  tls = { protocol: socket.getProtocol(), serial: socket.getPeerCertificate().serialNumber, url: rt.url.toString() };
});
rt.on('session.created', () => ask(0));
rt.on('response.done', (event) => {
  usages.push(event.response.usage);
  if (usages.length < Number(wanted)) ask(usages.length);
  else rt.close({ code: 1000, reason: 'done' });
});
rt.socket.on('close', (code) => {
  console.log(JSON.stringify({ usages, code, ...tls }));
  process.exit(usages.length === Number(wanted) ? 0 : 1);
});
