'use strict';
// The bench policy (../../haraka/plugins/bench_policy.js) for the forwarding
// row: no reverse-DNS lookup, RCPT containing "invalid" -> 550, any other
// RCPT -> 250; no queue hook of its own, so queue/smtp_forward delivers.
exports.register = function () {
  this.register_hook('lookup_rdns', 'no_rdns');
  this.register_hook('rcpt', 'rcpt_policy');
};

exports.no_rdns = function (next) {
  next(OK, 'localhost');
};

exports.rcpt_policy = function (next, connection, params) {
  const rcpt = params[0];
  const addr = typeof rcpt.address === 'function' ? rcpt.address() : String(rcpt.address);
  if (addr.includes('invalid')) return next(DENY, '5.1.1 Recipient address rejected');
  next(OK);
};
