SELECT 1 FROM auth.users WHERE username = %s;
