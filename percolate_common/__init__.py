"""Small pieces shared by the reading service and the tenant node."""
