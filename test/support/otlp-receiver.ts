import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";

/**
 * An OTLP/HTTP trace receiver on loopback: what a collector (Jaeger's
 * all-in-one, the OpenTelemetry Collector) listens for on `/v1/traces`.
 * It keeps every request body as it came (to search the raw bytes for a
 * secret) and decodes OTLP's JSON encoding, the one the gateway's exporter
 * sends (`Content-Type: application/json`; protobuf is refused with 415).
 */

/** One span as the receiver decoded it, attributes flattened. */
export interface ReceivedSpan {
  readonly service: string | undefined;
  readonly traceId: string;
  readonly spanId: string;
  /** Empty for a root span. */
  readonly parentSpanId: string;
  readonly name: string;
  /** OTLP's SpanKind: 1 internal, 2 server, 3 client. */
  readonly kind: number;
  readonly attributes: Readonly<Record<string, string | number | boolean>>;
  /** OTLP's status code: 0 unset, 1 ok, 2 error. */
  readonly status: number;
}

export interface OtlpReceiver {
  /** `http://127.0.0.1:PORT`: the `tracing.otlp_endpoint`. */
  readonly url: string;
  /** Every body POSTed to /v1/traces, as received. */
  readonly bodies: Buffer[];
  /** Every other request (method and path), which a correct exporter never sends. */
  readonly strays: string[];
  spans(): ReceivedSpan[];
  /** Polls until `match` holds for the spans received so far (default 10 s), then returns them. */
  waitFor(match: (spans: ReceivedSpan[]) => boolean, timeoutMs?: number): Promise<ReceivedSpan[]>;
  close(): Promise<void>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number };
type KeyValue = { key: string; value: AnyValue };

function flatten(attributes: readonly KeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of attributes ?? []) {
    out[key] = value.stringValue ?? (value.intValue !== undefined ? Number(value.intValue) : undefined) ?? value.boolValue ?? value.doubleValue ?? "";
  }
  return out;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const bodies: Buffer[] = [];
  const strays: string[] = [];
  const decoded: ReceivedSpan[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      if (req.method !== "POST" || req.url !== "/v1/traces") {
        strays.push(`${req.method} ${req.url}`);
        res.writeHead(404).end();
        return;
      }
      if (!String(req.headers["content-type"]).startsWith("application/json")) {
        res.writeHead(415).end();
        return;
      }
      const body = Buffer.concat(chunks);
      bodies.push(body);
      const message = JSON.parse(body.toString("utf8")) as {
        resourceSpans?: { resource?: { attributes?: KeyValue[] }; scopeSpans?: { spans?: Record<string, unknown>[] }[] }[];
      };
      for (const rs of message.resourceSpans ?? []) {
        const service = flatten(rs.resource?.attributes)["service.name"];
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            decoded.push({
              service: service === undefined ? undefined : String(service),
              traceId: String(s.traceId),
              spanId: String(s.spanId),
              parentSpanId: String(s.parentSpanId ?? ""),
              name: String(s.name),
              kind: Number(s.kind),
              attributes: flatten(s.attributes as KeyValue[] | undefined),
              status: Number((s.status as { code?: number } | undefined)?.code ?? 0),
            });
          }
        }
      }
      res.writeHead(200, { "content-type": "application/json" }).end("{}");
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    bodies,
    strays,
    spans: () => [...decoded],
    async waitFor(match, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const spans = [...decoded];
        if (match(spans)) return spans;
        if (Date.now() > deadline) throw new Error(`the receiver did not get the expected spans within ${timeoutMs} ms; got ${JSON.stringify(spans.map((s) => `${s.name} ${s.traceId}`))}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
