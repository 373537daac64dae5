-- the platform's initial administrator; the password arrives hashed, never in clear
INSERT INTO auth.users (username, email, password_hash, is_active, is_superuser)
VALUES (%s, %s, %s, true, true)
ON CONFLICT (username) DO NOTHING;
