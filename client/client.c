int placeholder_client;
