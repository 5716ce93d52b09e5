// A throwaway certificate authority for the TLS tests, made with the openssl command line
// in a temp directory at run time (no key is ever committed), and a TLS probe that tells
// which certificate a server hands to a new connection.

import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import tls from 'node:tls';
import { tempDir } from './helpers.mjs';

/** Throws a clear error when the openssl command line is missing. */
export function requireOpenssl() {
  try {
    execFileSync('openssl', ['version'], { stdio: 'pipe' });
  } catch {
    throw new Error('the TLS tests make their CA with the openssl command line: apt-get install openssl');
  }
}

const openssl = (dir, args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });

/** A new CA in a fresh temp directory: { dir, certPem, leaf(opts) }. */
export function makeCa(name = 'Switchboard test CA') {
  requireOpenssl();
  const dir = tempDir();
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', `/CN=${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
  const certPem = readFileSync(path.join(dir, 'ca.pem'), 'utf8');
  return {
    dir,
    certPem,
    /**
     * A server certificate for 127.0.0.1 and localhost signed by this CA, with the given
     * serial (hex) and CN; `rsa: true` makes an RSA key in PKCS#1 form, else EC P-256 in
     * PKCS#8. Returns { cert, key } as PEM strings (the chain: leaf then CA).
     */
    leaf({ serial, cn, rsa = false }) {
      const base = `leaf-${serial}`;
      if (rsa) {
        openssl(dir, ['genrsa', '-traditional', '-out', `${base}.key`, '2048']);
      } else {
        openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', `${base}.key`]);
      }
      openssl(dir, ['req', '-new', '-key', `${base}.key`, '-out', `${base}.csr`, '-subj', `/CN=${cn}`]);
      writeFileSync(path.join(dir, `${base}.ext`), [
        'basicConstraints=CA:FALSE',
        'keyUsage=critical,digitalSignature,keyEncipherment',
        'extendedKeyUsage=serverAuth',
        'subjectAltName=IP:127.0.0.1,DNS:localhost',
        '',
      ].join('\n'));
      openssl(dir, ['x509', '-req', '-in', `${base}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key',
        '-set_serial', `0x${serial}`, '-days', '2', '-extfile', `${base}.ext`, '-out', `${base}.pem`]);
      const leafPem = readFileSync(path.join(dir, `${base}.pem`), 'utf8');
      return { cert: leafPem + certPem, key: readFileSync(path.join(dir, `${base}.key`), 'utf8') };
    },
  };
}

/**
 * Opens a TLS connection to 127.0.0.1:port, trusting only `ca`, and resolves with the
 * served certificate's { serial (upper-case hex), cn, alpn }; rejects when the handshake
 * fails (an untrusted certificate included).
 */
export function probeCert(port, ca) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, ALPNProtocols: ['h2', 'http/1.1'] });
    socket.setTimeout(3000, () => socket.destroy(new Error('TLS probe timed out')));
    socket.once('secureConnect', () => {
      const cert = socket.getPeerCertificate();
      const out = { serial: cert.serialNumber, cn: cert.subject?.CN, alpn: socket.alpnProtocol };
      socket.end();
      resolve(out);
    });
    socket.once('error', reject);
  });
}

/** GET `url` over https trusting `ca`; resolves { status, text, json }. */
export function httpsGet(url, ca) {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, timeout: 3000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, text, json });
      });
    });
    req.on('timeout', () => req.destroy(new Error('https request timed out')));
    req.on('error', reject);
  });
}

/** A startServer() readiness check for a TLS listener: GET /healthz over https. */
export const healthyOverTls = async (server) => (await httpsGet(`${server.url}/healthz`, server.ca)).status === 200;
