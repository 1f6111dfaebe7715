-- How the endpoint signs: 'hmac-sha256' (whsec_ secret, v1 entries) or 'ed25519' (whsk_ key, v1a);
-- always written with the key it describes.
alter table endpoints add column signature_scheme text not null default 'hmac-sha256';
