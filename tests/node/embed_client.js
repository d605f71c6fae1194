// Calls percolate.reading.v1.ReadingService/Embed over mutual TLS from Node.js, using
// only the .proto files in proto/, and prints the response as JSON on stdout.
// Usage: node embed_client.js ADDRESS CA CERT KEY TEXT [TEXT ...]
"use strict";
const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const [address, ca, cert, key, ...texts] = process.argv.slice(2);
const protoRoot = path.resolve(__dirname, "../../proto");
const definition = protoLoader.loadSync("percolate/reading/v1/reading.proto", {
  includeDirs: [protoRoot], keepCase: true, longs: Number, enums: String, defaults: true,
});
const { ReadingService } = grpc.loadPackageDefinition(definition).percolate.reading.v1;
const credentials = grpc.credentials.createSsl(
  fs.readFileSync(ca), fs.readFileSync(key), fs.readFileSync(cert));
const client = new ReadingService(address, credentials);
const deadline = new Date(Date.now() + 60000);
// EMBED_TENANT_ID, when set, names a tenant in the request (the server must check it)
const request = { texts, normalize: false, tenant_id: process.env.EMBED_TENANT_ID || "" };
client.Embed(request, { deadline }, (error, response) => {
  if (error) {
    console.log(JSON.stringify({ code: error.code, details: error.details }));
    process.exit(3);
  }
  console.log(JSON.stringify(response));
  client.close();
});
