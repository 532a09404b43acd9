// A gRPC client in another language and on another HTTP/2 stack: Node.js's own http2 module (nghttp2), with the
// protobuf written and read by hand from proto/product_classification/v1, no gRPC or protobuf library.
//
//   node classify_listing.mjs ADDRESS API_KEY LISTING_ID MARKETPLACE PHOTO_FILE [gzip]
//
// Calls ListingClassifier/ClassifyListing once and prints one line of JSON: the gRPC status and message from the
// trailers, the error kind (trailer x-error-kind), the fields it read from the Classification, and the response
// message in base64 (so the test can check the hand decoding against the generated classes).

import { readFileSync } from "node:fs";
import http2 from "node:http2";
import zlib from "node:zlib";

const [address, apiKey, listingId, marketplace, photoFile, compression] = process.argv.slice(2);

// --- protobuf wire format (https://protobuf.dev/programming-guides/encoding/)
function varint(value) {
  const bytes = [];
  let v = BigInt(value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    bytes.push(byte);
  } while (v > 0n);
  return Buffer.from(bytes);
}
const lengthDelimited = (field, payload) => Buffer.concat([varint((field << 3) | 2), varint(payload.length), payload]);
const stringField = (field, text) => lengthDelimited(field, Buffer.from(text, "utf8"));

function readFields(buffer) {
  const fields = [];
  let at = 0;
  const readVarint = () => {
    let result = 0n, shift = 0n;
    for (;;) {
      const byte = buffer[at++];
      result |= BigInt(byte & 0x7f) << shift;
      if (!(byte & 0x80)) return result;
      shift += 7n;
    }
  };
  while (at < buffer.length) {
    const key = Number(readVarint());
    const field = key >> 3, wire = key & 7;
    if (wire === 0) fields.push({ field, value: readVarint() });
    else if (wire === 1) { fields.push({ field, value: buffer.subarray(at, at + 8) }); at += 8; }
    else if (wire === 5) { fields.push({ field, value: buffer.readFloatLE(at) }); at += 4; }
    else if (wire === 2) {
      const length = Number(readVarint());
      fields.push({ field, value: buffer.subarray(at, at + length) });
      at += length;
    } else throw new Error(`wire type ${wire} at byte ${at}`);
  }
  return fields;
}
const first = (fields, number) => fields.find((f) => f.field === number)?.value;

// Listing { listing_id = 1; marketplace = 2; locale = 3; bytes image_bytes = 4; } in ClassifyListingRequest.listing = 1
const listing = Buffer.concat([stringField(1, listingId), stringField(2, marketplace), stringField(3, "de-DE"),
                               lengthDelimited(4, readFileSync(photoFile))]);
const request = lengthDelimited(1, listing);

// --- gRPC over HTTP/2 (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-HTTP2.md)
const compressed = compression === "gzip";
const body = compressed ? zlib.gzipSync(request) : request;
const prefix = Buffer.alloc(5);
prefix[0] = compressed ? 1 : 0;
prefix.writeUInt32BE(body.length, 1);

const session = http2.connect(`http://${address}`);
session.on("error", (error) => { console.log(JSON.stringify({ transport_error: String(error) })); process.exit(2); });
const headers = {
  ":method": "POST", ":path": "/product_classification.v1.ListingClassifier/ClassifyListing",
  "content-type": "application/grpc+proto", te: "trailers", "grpc-timeout": "60S",
  "user-agent": "interop-node/1.0",
};
if (apiKey) headers.authorization = `Bearer ${apiKey}`;
if (compressed) headers["grpc-encoding"] = "gzip";
const stream = session.request(headers);
const chunks = [];
let responseHeaders = {}, trailers = {};
stream.on("response", (h) => { responseHeaders = h; });
stream.on("trailers", (t) => { trailers = t; });
stream.on("data", (chunk) => chunks.push(chunk));
stream.on("end", () => {
  const all = Buffer.concat(chunks);
  // A trailers-only answer (an error before any message) carries grpc-status in the headers.
  const status = trailers["grpc-status"] ?? responseHeaders["grpc-status"];
  const message = trailers["grpc-message"] ?? responseHeaders["grpc-message"] ?? "";
  const out = {
    content_type: responseHeaders["content-type"],
    grpc_status: status === undefined ? null : Number(status),
    grpc_message: decodeURIComponent(message),
    error_kind: trailers["x-error-kind"] ?? responseHeaders["x-error-kind"] ?? null,
  };
  if (all.length >= 5) {
    if (all[0] !== 0) throw new Error("a compressed response was not asked for");
    const message_ = all.subarray(5, 5 + all.readUInt32BE(1));
    const classification = readFields(message_);
    const category = first(classification, 6);
    out.listing_id = first(classification, 1)?.toString("utf8");
    out.status = Number(first(classification, 5) ?? 0n);
    out.label = first(classification, 7)?.toString("utf8");
    out.confidence = first(classification, 8);
    out.category_name = category && first(readFields(category), 2)?.toString("utf8");
    out.candidates = classification.filter((f) => f.field === 9).length;
    out.response_b64 = message_.toString("base64");
  }
  console.log(JSON.stringify(out));
  session.close();
});
stream.end(Buffer.concat([prefix, body]));
